// Closed loop: a simulated Franka Panda (MuJoCo) tracks a joint-space figure-eight at 1 kHz
// with computed-torque control while holding a payload it has never seen; halfway through
// it sets the payload down and picks up another. Four controllers fly the same run:
//
//   pd       gravity compensation from the nominal model plus PD only
//   nominal  the payload-free inverse dynamics (what runs on the robot today)
//   msr      nominal + an msr model of the residual torque, adapted online through libmsr:
//            msr_session_observe every tick (recursive Gauss-Newton, forgetting factor),
//            msr_session_predict every tick
//   window   the same model adapted by msr_session_adapt on a sliding window of the last K
//            samples every N ticks (the batch alternative)
//   oracle   the inverse dynamics of the true model, payload included
//
// The control law is tau = f(q, qd, qdd_ref + Kp e + Kd ed) on measured (noisy) states, with
// the sensor noise of the panda-payload family the model was meta-trained on. The "measured"
// acceleration of an observation is, by default, the family's sensor model (the acceleration
// over the tick plus 0.05 rad/s^2 of noise: a good estimator); with --accel measured, what a
// robot differentiating its own noisy velocities through a low-pass filter gets. The
// "measured" torque is the applied torque plus torque-sensor noise.
//
// Prints tracking errors per controller (whole run and per payload segment), the time after
// each payload change until the msr controller's rolling error is within 1.2x the oracle's,
// and the latency percentiles of predict and of the update; writes a CSV of the run.
//
//   panda_payload MODEL.msr PANDA.xml [--seconds S] [--seed N] [--switch S] [--forget G]
//                 [--kp KP] [--kd KD] [--window K] [--stride N] [--every N] [--csv FILE]
//                 [--accel family|measured] [--accel-cutoff HZ] [--count-allocs]
//
// Real-time discipline: everything is allocated before the loop; the loop runs
// msr_session_predict / _observe / _adapt and MuJoCo's mj_inverse / mj_step only. With
// alloc_count.cpp the program counts every malloc and pthread mutex lock made inside the
// loops (libmsr's, MuJoCo's and its own) and, with --count-allocs, fails if there was one.
#include <mujoco/mujoco.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "alloc_count.h"
#include "msr.hpp"

namespace {

using Clock = std::chrono::steady_clock;
constexpr int kJoints = 7;
constexpr int kInputs = 4 * kJoints;
// The panda-payload family's sensor noise (trainer/src/tasks/robots/panda.rs): joint angle
// (rad), velocity (rad/s), acceleration (rad/s^2), torque (N m).
constexpr double kNoiseQ = 1e-4, kNoiseQd = 2e-3, kNoiseQdd = 0.05, kNoiseTau = 0.05;

using Vec7 = std::array<double, kJoints>;

// A solid box of random sides (2-20 cm) and orientation, its centre of mass in a 10 cm ball
// around the end-effector site: the panda-payload family's payloads.
struct Payload {
    double mass = 0.0;
    double com[3] = {0, 0, 0};
    double axes[4] = {1, 0, 0, 0};
    double principal[3] = {0, 0, 0};

    static Payload random(double mass, std::mt19937_64& rng) {
        std::normal_distribution<double> normal(0.0, 1.0);
        std::uniform_real_distribution<double> uniform(0.0, 1.0);
        Payload p;
        p.mass = mass;
        double dir[3], n = 0.0;
        do {
            n = 0.0;
            for (double& d : dir) {
                d = normal(rng);
                n += d * d;
            }
        } while (n < 1e-12);
        const double r = 0.1 * std::cbrt(uniform(rng)) / std::sqrt(n);
        for (int i = 0; i < 3; ++i) p.com[i] = dir[i] * r;
        do {
            n = 0.0;
            for (double& a : p.axes) {
                a = normal(rng);
                n += a * a;
            }
        } while (n < 1e-12);
        for (double& a : p.axes) a /= std::sqrt(n);
        double s[3];
        for (double& v : s) v = 0.02 + 0.18 * uniform(rng);
        p.principal[0] = mass * (s[1] * s[1] + s[2] * s[2]) / 12.0;
        p.principal[1] = mass * (s[0] * s[0] + s[2] * s[2]) / 12.0;
        p.principal[2] = mass * (s[0] * s[0] + s[1] * s[1]) / 12.0;
        return p;
    }

    void attach(mjModel* m, int body) const {
        m->body_mass[body] = mass;
        std::copy(com, com + 3, m->body_ipos + 3 * body);
        std::copy(axes, axes + 4, m->body_iquat + 4 * body);
        std::copy(principal, principal + 3, m->body_inertia + 3 * body);
        // The compiler marked the (massless) payload body's inertial frame as its own
        // frame; kinematics would then ignore the centre of mass set here.
        m->body_sameframe[body] = mjSAMEFRAME_NONE;
    }
};

// The reference: a figure-eight of the end effector (base yaw at f, shoulder and elbow
// pitch at 2f) around a ready pose, wrist joints swinging too.
struct Reference {
    Vec7 centre{0.0, -0.3, 0.0, -2.2, 0.0, 1.6, 0.8};
    Vec7 amplitude{0.4, 0.2, 0.3, 0.2, 0.4, 0.2, 0.5};
    Vec7 harmonic{1, 2, 1, 2, 1, 1, 1};
    double omega = 2.0 * M_PI / 8.0;  // one figure-eight every 8 s

    void at(double t, Vec7& q, Vec7& qd, Vec7& qdd) const {
        for (int j = 0; j < kJoints; ++j) {
            const double w = harmonic[j] * omega;
            q[j] = centre[j] + amplitude[j] * std::sin(w * t);
            qd[j] = amplitude[j] * w * std::cos(w * t);
            qdd[j] = -amplitude[j] * w * w * std::sin(w * t);
        }
    }
};

// Generalised forces that give acceleration `qacc` at (`qpos`, `qvel`) in model `m`.
void inverse(const mjModel* m, mjData* d, const Vec7& q, const Vec7& qd, const Vec7& qdd, Vec7& tau) {
    std::copy(q.begin(), q.end(), d->qpos);
    std::copy(qd.begin(), qd.end(), d->qvel);
    std::copy(qdd.begin(), qdd.end(), d->qacc);
    mj_inverse(m, d);
    std::copy(d->qfrc_inverse, d->qfrc_inverse + kJoints, tau.begin());
}

// The msr model's inputs: sin q, cos q, qd, qdd.
void features(const Vec7& q, const Vec7& qd, const Vec7& qdd, float* x) {
    for (int j = 0; j < kJoints; ++j) {
        x[j] = static_cast<float>(std::sin(q[j]));
        x[kJoints + j] = static_cast<float>(std::cos(q[j]));
        x[2 * kJoints + j] = static_cast<float>(qd[j]);
        x[3 * kJoints + j] = static_cast<float>(qdd[j]);
    }
}

double percentile(std::vector<double> v, double p) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    return v[static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5)];
}

enum class Ctl { Pd, Nominal, Msr, Window, Oracle };
constexpr Ctl kControllers[] = {Ctl::Pd, Ctl::Nominal, Ctl::Msr, Ctl::Window, Ctl::Oracle};
const char* name(Ctl c) {
    switch (c) {
        case Ctl::Pd: return "pd";
        case Ctl::Nominal: return "nominal";
        case Ctl::Msr: return "msr";
        case Ctl::Window: return "window";
        case Ctl::Oracle: return "oracle";
    }
    return "?";
}

struct Options {
    double seconds = 20.0, switch_at = 10.0, forget = 0.995;
    // Computed-torque gains: a critically damped error response at 20 rad/s per joint.
    double kp = 400.0, kd = 40.0;
    std::size_t window = 20, every = 50, stride = 10;
    // Scale the model's Gauss-Newton damping (the prior's weight) for observe and the window.
    // These defaults (with forget 0.995, stride 10) were chosen on seeds 1-5 of a grid
    // (docs/robots.md#closed-loop); the results are reported on seeds 11-20.
    double damping = 0.1, window_damping = 0.01;
    // The acceleration of an observation: the family's sensor model (false) or differenced
    // measured velocities through a first-order low-pass filter at accel_cutoff Hz (true).
    bool measured_accel = false;
    double accel_cutoff = 20.0;
    unsigned seed = 1;
    std::string csv;
    bool count_allocs = false;
};

// One controller's run: per-tick joint positions (for the tracking errors) and latencies.
struct Run {
    std::vector<double> q;            // [ticks, 7]
    std::vector<double> predict_us;   // per tick (msr, window)
    std::vector<double> update_us;    // per update (observe every tick; adapt every N)
    Vec7 torque_sq{};                 // sum of squared errors of the applied torque vs the oracle's
    std::size_t saturated = 0;        // ticks with a clamped torque
    std::size_t update_errors = 0;    // updates libmsr refused (diverged): kept going
    long allocations = 0;             // mallocs inside the loop
    long locks = 0;                   // pthread mutexes locked inside the loop
};

class Loop {
public:
    Loop(const char* xml, const msr::Model& model, const Options& o) : model_(model), o_(o) {
        char err[1000] = "";
        plant_ = mj_loadXML(xml, nullptr, err, sizeof err);
        nominal_ = plant_ ? mj_loadXML(xml, nullptr, err, sizeof err) : nullptr;
        if (!plant_ || !nominal_) throw std::runtime_error(std::string("MuJoCo: ") + err);
        // Discrete-time inverse dynamics, consistent with the integrator: the torque of
        // mj_inverse(q, qd, a) makes mj_step produce (qd_next - qd) / h = a.
        plant_->opt.enableflags |= mjENBL_INVDISCRETE;
        nominal_->opt.enableflags |= mjENBL_INVDISCRETE;
        sim_ = mj_makeData(plant_);
        oracle_ = mj_makeData(plant_);
        nom_ = mj_makeData(nominal_);
        payload_ = mj_name2id(plant_, mjOBJ_BODY, "payload");
        site_ = mj_name2id(plant_, mjOBJ_SITE, "end_effector");
        if (payload_ < 0 || site_ < 0 || plant_->nv != kJoints || plant_->nu != kJoints)
            throw std::runtime_error("the MJCF is not the Panda of robots/panda (7 joints, 7 motors, payload body)");
        h_ = plant_->opt.timestep;
        ticks_ = static_cast<std::size_t>(std::llround(o.seconds / h_));
        switch_tick_ = static_cast<std::size_t>(std::llround(o.switch_at / h_));
        std::mt19937_64 rng(o.seed);
        std::uniform_real_distribution<double> mass(1.0, 3.0);
        first_ = Payload::random(mass(rng), rng);
        second_ = Payload::random(mass(rng), rng);
        // The reference's end-effector positions, for the errors.
        ee_ref_.resize(3 * ticks_);
        Vec7 q, qd, qdd;
        for (std::size_t i = 0; i < ticks_; ++i) {
            ref_.at(static_cast<double>(i) * h_, q, qd, qdd);
            std::copy(q.begin(), q.end(), nom_->qpos);
            mj_kinematics(nominal_, nom_);
            std::copy(nom_->site_xpos + 3 * site_, nom_->site_xpos + 3 * site_ + 3, &ee_ref_[3 * i]);
        }
    }
    ~Loop() {
        mj_deleteData(sim_);
        mj_deleteData(oracle_);
        mj_deleteData(nom_);
        mj_deleteModel(plant_);
        mj_deleteModel(nominal_);
    }
    Loop(const Loop&) = delete;
    Loop& operator=(const Loop&) = delete;

    std::size_t ticks() const { return ticks_; }
    std::size_t switch_tick() const { return switch_tick_; }
    double h() const { return h_; }
    const Payload& first() const { return first_; }
    const Payload& second() const { return second_; }

    Run run(Ctl c) {
        Run out;
        out.q.resize(kJoints * ticks_);
        out.predict_us.reserve(ticks_);
        out.update_us.reserve(ticks_);
        // One session per controller (per control thread); the model is shared.
        msr::Session session(model_);
        // Set-up: allocates the solver's buffers.
        session.set_inner(MSR_INNER_GAUSS_NEWTON, static_cast<float>(c == Ctl::Window ? o_.window_damping : o_.damping));
        session.set_forgetting(static_cast<float>(o_.forget));
        std::vector<float> win_x(o_.window * kInputs), win_y(o_.window * kJoints);
        std::size_t win_n = 0, win_head = 0;
        float x[kInputs], y[kJoints], residual[kJoints];

        std::mt19937_64 noise(o_.seed * 7919 + 17);  // the same sensor noise for every controller
        std::normal_distribution<double> normal(0.0, 1.0);
        first_.attach(plant_, payload_);
        mj_resetData(plant_, sim_);
        Vec7 q_r, qd_r, qdd_r, q_m, qd_m, qdd_m, a, tau, tau_nom, qd_before;
        // --accel measured: the next tick's velocity noise, drawn a tick early (the
        // acceleration estimate differences two measured velocities), and the filter state.
        Vec7 qd_noise_next{}, qdd_filtered{};
        bool have_next = false;
        const double alpha = h_ / (h_ + 1.0 / (2.0 * M_PI * o_.accel_cutoff));
        ref_.at(0.0, q_r, qd_r, qdd_r);
        std::copy(q_r.begin(), q_r.end(), sim_->qpos);
        std::copy(qd_r.begin(), qd_r.end(), sim_->qvel);

        alloc_count::start();
        for (std::size_t i = 0; i < ticks_; ++i) {
            if (i == switch_tick_) second_.attach(plant_, payload_);  // set down, pick up
            ref_.at(static_cast<double>(i) * h_, q_r, qd_r, qdd_r);
            for (int j = 0; j < kJoints; ++j) {
                q_m[j] = sim_->qpos[j] + kNoiseQ * normal(noise);
                qd_m[j] = sim_->qvel[j] + (have_next ? qd_noise_next[j] : kNoiseQd * normal(noise));
                a[j] = qdd_r[j] + o_.kp * (q_r[j] - q_m[j]) + o_.kd * (qd_r[j] - qd_m[j]);
            }
            switch (c) {
                case Ctl::Pd: {
                    // Gravity from the nominal model plus the PD terms through its inertia.
                    Vec7 zero{};
                    Vec7 pd;
                    for (int j = 0; j < kJoints; ++j) pd[j] = a[j] - qdd_r[j];
                    inverse(nominal_, nom_, q_m, zero, pd, tau);
                    break;
                }
                case Ctl::Nominal: inverse(nominal_, nom_, q_m, qd_m, a, tau); break;
                case Ctl::Oracle: inverse(plant_, oracle_, q_m, qd_m, a, tau); break;
                case Ctl::Msr:
                case Ctl::Window: {
                    inverse(nominal_, nom_, q_m, qd_m, a, tau);
                    features(q_m, qd_m, a, x);
                    const auto t0 = Clock::now();
                    session.predict(x, kInputs, 1, residual, kJoints);
                    out.predict_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
                    for (int j = 0; j < kJoints; ++j) tau[j] += residual[j];
                    break;
                }
            }
            // How far the torque is from what the true model would apply here.
            inverse(plant_, oracle_, q_m, qd_m, a, tau_nom);
            for (int j = 0; j < kJoints; ++j) out.torque_sq[j] += (tau[j] - tau_nom[j]) * (tau[j] - tau_nom[j]);
            for (int j = 0; j < kJoints; ++j) {
                const double lo = plant_->actuator_ctrlrange[2 * j], hi = plant_->actuator_ctrlrange[2 * j + 1];
                const double clamped = std::clamp(tau[j], lo, hi);
                if (clamped != tau[j]) ++out.saturated;
                sim_->ctrl[j] = tau[j] = clamped;
            }
            std::copy(sim_->qvel, sim_->qvel + kJoints, qd_before.begin());
            std::copy(sim_->qpos, sim_->qpos + kJoints, &out.q[kJoints * i]);
            mj_step(plant_, sim_);
            if (c != Ctl::Msr && c != Ctl::Window) continue;

            // The tick's observation: measured state, acceleration and torque -> residual.
            if (o_.measured_accel) {
                // What a robot has: the difference of two noisy velocity measurements,
                // low-pass filtered (first order, --accel-cutoff Hz).
                for (int j = 0; j < kJoints; ++j) {
                    qd_noise_next[j] = kNoiseQd * normal(noise);
                    const double raw = (sim_->qvel[j] + qd_noise_next[j] - qd_m[j]) / h_;
                    qdd_filtered[j] += alpha * (raw - qdd_filtered[j]);
                    qdd_m[j] = qdd_filtered[j];
                }
                have_next = true;
            } else {
                // The family's sensor model: the acceleration over the tick plus 0.05 rad/s^2.
                for (int j = 0; j < kJoints; ++j)
                    qdd_m[j] = (sim_->qvel[j] - qd_before[j]) / h_ + kNoiseQdd * normal(noise);
            }
            inverse(nominal_, nom_, q_m, qd_m, qdd_m, tau_nom);
            features(q_m, qd_m, qdd_m, x);
            for (int j = 0; j < kJoints; ++j)
                y[j] = static_cast<float>(tau[j] + kNoiseTau * normal(noise) - tau_nom[j]);
            if (c == Ctl::Msr) {
                const auto t0 = Clock::now();
                try {
                    session.observe(x, kInputs, y, kJoints, 1);
                } catch (const msr::Error&) {
                    ++out.update_errors;  // the update was undone; the stream restarts
                }
                out.update_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
            } else {
                if (i % o_.stride == 0) {  // the window keeps one sample every `stride` ticks
                    std::copy(x, x + kInputs, &win_x[win_head * kInputs]);
                    std::copy(y, y + kJoints, &win_y[win_head * kJoints]);
                    win_head = (win_head + 1) % o_.window;
                    win_n = std::min(win_n + 1, o_.window);
                }
                if (i % o_.every == 0 && win_n > 0) {
                    const auto t0 = Clock::now();
                    try {
                        session.reset();
                        session.adapt(win_x.data(), win_n * kInputs, win_y.data(), win_n * kJoints, win_n);
                    } catch (const msr::Error&) {
                        ++out.update_errors;
                    }
                    out.update_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
                }
            }
        }
        out.allocations = alloc_count::stop();
        out.locks = alloc_count::locks();
        return out;
    }

    // End-effector position error (m) at every tick of a run.
    std::vector<double> ee_errors(const Run& r) {
        std::vector<double> e(ticks_);
        for (std::size_t i = 0; i < ticks_; ++i) {
            std::copy(&r.q[kJoints * i], &r.q[kJoints * i] + kJoints, nom_->qpos);
            mj_kinematics(nominal_, nom_);
            double s = 0.0;
            for (int k = 0; k < 3; ++k) {
                const double d = nom_->site_xpos[3 * site_ + k] - ee_ref_[3 * i + k];
                s += d * d;
            }
            e[i] = std::sqrt(s);
        }
        return e;
    }

    // Joint tracking error (rad) of joint j at tick i.
    double joint_error(const Run& r, std::size_t i, int j) const {
        Vec7 q, qd, qdd;
        ref_.at(static_cast<double>(i) * h_, q, qd, qdd);
        return r.q[kJoints * i + j] - q[j];
    }

private:
    const msr::Model& model_;
    Options o_;
    mjModel* plant_ = nullptr;    // the true robot, payload attached: simulation and oracle
    mjModel* nominal_ = nullptr;  // the payload-free model
    mjData* sim_ = nullptr;
    mjData* oracle_ = nullptr;
    mjData* nom_ = nullptr;
    int payload_ = -1, site_ = -1;
    double h_ = 0.001;
    std::size_t ticks_ = 0, switch_tick_ = 0;
    Payload first_, second_;
    Reference ref_;
    std::vector<double> ee_ref_;
};

double rms(const std::vector<double>& e, std::size_t from, std::size_t to) {
    double s = 0.0;
    for (std::size_t i = from; i < to; ++i) s += e[i] * e[i];
    return to > from ? std::sqrt(s / static_cast<double>(to - from)) : 0.0;
}

// Seconds after tick `from` until the 100 ms rolling RMS of `e` is within `factor` of the
// oracle's; -1 if never before `to`.
double time_to_within(const std::vector<double>& e, const std::vector<double>& oracle, std::size_t from,
                      std::size_t to, double factor, double h) {
    const std::size_t w = static_cast<std::size_t>(0.1 / h);
    for (std::size_t i = from + w; i <= to; ++i) {
        if (rms(e, i - w, i) <= factor * rms(oracle, i - w, i)) return static_cast<double>(i - w - from) * h;
    }
    return -1.0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr,
                     "usage: %s MODEL.msr PANDA.xml [--seconds S] [--seed N] [--switch S] [--forget G]\n"
                     "       [--kp KP] [--kd KD] [--window K] [--stride N] [--every N] [--csv FILE] [--count-allocs]\n",
                     argv[0]);
        return 2;
    }
    Options o;
    for (int i = 3; i < argc; ++i) {
        const std::string a = argv[i];
        const char* v = i + 1 < argc ? argv[i + 1] : "";
        if (a == "--count-allocs") { o.count_allocs = true; continue; }
        if (a == "--accel") {
            const std::string v2 = v;
            if (v2 != "family" && v2 != "measured") {
                std::fprintf(stderr, "--accel is family or measured\n");
                return 2;
            }
            o.measured_accel = v2 == "measured";
            ++i;
            continue;
        }
        if (a == "--seconds") o.seconds = std::atof(v);
        else if (a == "--seed") o.seed = static_cast<unsigned>(std::atoi(v));
        else if (a == "--switch") o.switch_at = std::atof(v);
        else if (a == "--forget") o.forget = std::atof(v);
        else if (a == "--kp") o.kp = std::atof(v);
        else if (a == "--kd") o.kd = std::atof(v);
        else if (a == "--window") o.window = static_cast<std::size_t>(std::atoi(v));
        else if (a == "--every") o.every = static_cast<std::size_t>(std::atoi(v));
        else if (a == "--stride") o.stride = static_cast<std::size_t>(std::atoi(v));
        else if (a == "--window-damping") o.window_damping = std::atof(v);
        else if (a == "--damping") o.damping = std::atof(v);
        else if (a == "--accel-cutoff") o.accel_cutoff = std::atof(v);
        else if (a == "--csv") o.csv = v;
        else { std::fprintf(stderr, "unknown option %s\n", a.c_str()); return 2; }
        ++i;
    }
    if (!(o.seconds > 0.0) || o.window == 0 || o.every == 0 || o.stride == 0 || !(o.accel_cutoff > 0.0)) {
        std::fprintf(stderr, "--seconds, --window, --every and --stride must be positive\n");
        return 2;
    }
    try {
        const msr::Model model = msr::Model::load(argv[1]);
        const msr_model_info info = model.info();
        if (info.loss != MSR_LOSS_MSE || info.input_len != kInputs || info.output_len != kJoints) {
            std::fprintf(stderr, "%s is not a panda-payload model (28 inputs -> 7 torques)\n", argv[1]);
            return 1;
        }
        Loop loop(argv[2], model, o);
        const std::size_t n = loop.ticks(), s = std::min(loop.switch_tick(), n);
        std::printf("panda-payload closed loop: %.1f s at %.0f Hz, payload %.2f kg, then %.2f kg from t = %.2f s\n",
                    o.seconds, 1.0 / loop.h(), loop.first().mass, loop.second().mass, o.switch_at);

        std::vector<Run> runs;
        std::vector<std::vector<double>> errors;
        for (Ctl c : kControllers) {
            runs.push_back(loop.run(c));
            errors.push_back(loop.ee_errors(runs.back()));
        }
        const std::vector<double>& oracle = errors.back();
        std::printf("\n%-8s %10s %10s %10s %8s   joint RMSE (mrad) 1..7\n", "", "EE rms mm", "seg1 mm",
                    "seg2 mm", "max mm");
        for (std::size_t k = 0; k < runs.size(); ++k) {
            const auto& e = errors[k];
            std::printf("%-8s %10.3f %10.3f %10.3f %8.2f  ", name(kControllers[k]), 1e3 * rms(e, 0, n),
                        1e3 * rms(e, 0, s), 1e3 * rms(e, s, n), 1e3 * *std::max_element(e.begin(), e.end()));
            for (int j = 0; j < kJoints; ++j) {
                double acc = 0.0;
                for (std::size_t i = 0; i < n; ++i) acc += std::pow(loop.joint_error(runs[k], i, j), 2);
                std::printf(" %6.3f", 1e3 * std::sqrt(acc / static_cast<double>(n)));
            }
            std::printf("\n");
        }
        std::printf("\ntorque error against the true model's at the same command, RMS (N m), joints 1..7\n");
        for (std::size_t k = 0; k < runs.size(); ++k) {
            std::printf("%-8s", name(kControllers[k]));
            for (int j = 0; j < kJoints; ++j) std::printf(" %7.3f", std::sqrt(runs[k].torque_sq[j] / static_cast<double>(n)));
            std::printf("\n");
        }
        std::printf("\nratios (EE rms): msr/nominal %.3f  msr/oracle %.3f  window/nominal %.3f  window/oracle %.3f\n",
                    rms(errors[2], 0, n) / rms(errors[1], 0, n), rms(errors[2], 0, n) / rms(oracle, 0, n),
                    rms(errors[3], 0, n) / rms(errors[1], 0, n), rms(errors[3], 0, n) / rms(oracle, 0, n));
        for (std::size_t k : {2u, 3u}) {
            std::printf("%s: time to within 1.2x of the oracle (100 ms rolling RMS): from start %.3f s", name(kControllers[k]),
                        time_to_within(errors[k], oracle, 0, s, 1.2, loop.h()));
            if (s < n)
                std::printf(", after the payload change %.3f s", time_to_within(errors[k], oracle, s, n, 1.2, loop.h()));
            std::printf("\n");
        }
        std::printf("\nlatency per tick (us)       p50      p99      max\n");
        for (std::size_t k : {2u, 3u}) {
            const Run& r = runs[k];
            std::printf("%-7s predict       %8.2f %8.2f %8.2f\n", name(kControllers[k]), percentile(r.predict_us, 0.5),
                        percentile(r.predict_us, 0.99), percentile(r.predict_us, 1.0));
            std::printf("%-7s %-13s %8.2f %8.2f %8.2f   (%zu updates)\n", name(kControllers[k]),
                        k == 2 ? "observe" : "adapt", percentile(r.update_us, 0.5), percentile(r.update_us, 0.99),
                        percentile(r.update_us, 1.0), r.update_us.size());
        }
        std::vector<double> both(runs[2].predict_us.size());
        for (std::size_t i = 0; i < both.size(); ++i) both[i] = runs[2].predict_us[i] + runs[2].update_us[i];
        std::printf("msr     predict+observe %8.2f %8.2f %8.2f\n", percentile(both, 0.5), percentile(both, 0.99),
                    percentile(both, 1.0));

        long allocs = 0, locks = 0;
        for (std::size_t k = 0; k < runs.size(); ++k) {
            allocs += runs[k].allocations;
            locks += runs[k].locks;
            if (runs[k].allocations) std::printf("%s: %ld allocations\n", name(kControllers[k]), runs[k].allocations);
            if (runs[k].saturated || runs[k].update_errors)
                std::printf("%s: %zu ticks with a torque at its limit, %zu updates refused\n", name(kControllers[k]),
                            runs[k].saturated, runs[k].update_errors);
        }
        std::printf("allocations inside the loops: %ld\nmutex locks inside the loops: %ld\n", allocs, locks);

        // One line for scripts (scripts/results-closed-loop.sh): EE RMS errors (mm) over the
        // run and after the change, recovery times (s, -1: never), latency p99s (us).
        std::printf("summary seed=%u", o.seed);
        for (std::size_t k = 0; k < runs.size(); ++k)
            std::printf(" %s=%.5f %s_seg2=%.5f", name(kControllers[k]), 1e3 * rms(errors[k], 0, n),
                        name(kControllers[k]), 1e3 * rms(errors[k], s, n));
        std::printf(" msr_recover=%.3f window_recover=%.3f msr_p99_us=%.2f window_adapt_p99_us=%.2f\n",
                    s < n ? time_to_within(errors[2], oracle, s, n, 1.2, loop.h()) : -1.0,
                    s < n ? time_to_within(errors[3], oracle, s, n, 1.2, loop.h()) : -1.0,
                    percentile(both, 0.99), percentile(runs[3].update_us, 0.99));

        if (!o.csv.empty()) {
            std::FILE* f = std::fopen(o.csv.c_str(), "w");
            if (!f) throw std::runtime_error("cannot write " + o.csv);
            std::fprintf(f, "t,payload_kg");
            for (Ctl c : kControllers) std::fprintf(f, ",%s_mm", name(c));
            std::fprintf(f, "\n");
            for (std::size_t i = 0; i < n; ++i) {
                std::fprintf(f, "%.3f,%.3f", static_cast<double>(i) * loop.h(), i < s ? loop.first().mass : loop.second().mass);
                for (const auto& e : errors) std::fprintf(f, ",%.5f", 1e3 * e[i]);
                std::fprintf(f, "\n");
            }
            std::fclose(f);
        }
        if (o.count_allocs && (allocs != 0 || locks != 0)) {
            std::fprintf(stderr, "the control loops allocated or locked\n");
            return 1;
        }
    } catch (const msr::Error& e) {
        std::fprintf(stderr, "libmsr: %s (status %d)\n", e.what(), static_cast<int>(e.status()));
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
    return 0;
}
