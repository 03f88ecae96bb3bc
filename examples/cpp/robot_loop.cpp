// A simulated control loop: every tick the robot reads 70 sensor values and predicts 68
// responses with an adapted msr model. Every `--switch` ticks the task changes (a new
// response filter, say a new tool); the robot notices its error, adapts from its last few
// observations, and carries on. Prints the prediction error before and after each
// adaptation and per-tick latency percentiles. With `--stream 1` the session adapts by
// damped Gauss-Newton instead and folds every tick's observation in as it arrives
// (msr_session_observe), with no window to keep.
//
//   robot_loop MODEL.msr [--ticks N] [--rate HZ] [--switch N] [--window K] [--stream 0|1]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "msr.hpp"

using Clock = std::chrono::steady_clock;

static double percentile(std::vector<double> v, double p) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    return v[static_cast<std::size_t>(p * (v.size() - 1) + 0.5)];
}

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODEL.msr [--ticks N] [--rate HZ] [--switch N] [--window K]\n", argv[0]);
        return 2;
    }
    int ticks = 2000, rate = 1000, every = 500, window = 3, stream = 0;
    for (int i = 2; i + 1 < argc; i += 2) {
        std::string a = argv[i];
        int v = std::atoi(argv[i + 1]);
        if (a == "--ticks") ticks = v;
        else if (a == "--rate") rate = v;
        else if (a == "--switch") every = v;
        else if (a == "--window") window = v;
        else if (a == "--stream") stream = v;
    }
    try {
        msr::Model model = msr::Model::load(argv[1]);
        msr_model_info info = model.info();
        const std::size_t fi = info.input_len, fo = info.output_len;
        if (info.loss != MSR_LOSS_MSE || fi != fo + 2) {
            std::fprintf(stderr, "this loop needs a rank1-shaped regression model (70 -> 68)\n");
            return 1;
        }
        msr::Session session(model);
        // Set-up, outside the loop: Gauss-Newton allocates its buffers here.
        if (stream) session.set_inner(MSR_INNER_GAUSS_NEWTON, 0.01f);
        std::mt19937 gen(7);
        std::normal_distribution<float> normal(0.0f, 1.0f);

        std::vector<float> filter(3), x(fi), y(fo), pred(fo);
        std::vector<float> hist_x(window * fi), hist_y(window * fo);  // ring buffer
        std::vector<double> predict_us, adapt_us;
        predict_us.reserve(ticks);
        double err_sum = 0.0;
        int err_n = 0, seen = 0, since_switch = 0, phase = 0;
        const auto period = std::chrono::nanoseconds(1000000000LL / std::max(rate, 1));
        auto next = Clock::now();

        for (int t = 0; t < ticks; ++t) {
            if (t % every == 0) {  // the world changes
                for (auto& f : filter) f = normal(gen);
                if (t > 0) {
                    std::printf("  task %d: mean error after adapting %.4f\n", phase, err_sum / std::max(err_n, 1));
                }
                ++phase;
                session.reset();
                seen = 0;
                since_switch = 0;
                err_sum = 0.0;
                err_n = 0;
            }
            for (auto& v : x) v = normal(gen);
            for (std::size_t p = 0; p < fo; ++p)
                y[p] = filter[0] * x[p] + filter[1] * x[p + 1] + filter[2] * x[p + 2];

            auto t0 = Clock::now();
            session.predict(x.data(), fi, 1, pred.data(), fo);
            auto t1 = Clock::now();
            predict_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());

            double err = 0.0;
            for (std::size_t p = 0; p < fo; ++p) err += (pred[p] - y[p]) * (pred[p] - y[p]);
            err /= static_cast<double>(fo);

            // Remember the observation.
            std::copy(x.begin(), x.end(), hist_x.begin() + (seen % window) * fi);
            std::copy(y.begin(), y.end(), hist_y.begin() + (seen % window) * fo);
            ++seen;
            ++since_switch;

            if (stream) {  // fold the new observation in, every tick
                if (since_switch == 1) {
                    std::printf("task %d: error before adapting %.4f\n", phase, err);
                } else {
                    err_sum += err;
                    ++err_n;
                }
                auto a0 = Clock::now();
                session.observe(x.data(), fi, y.data(), fo, 1);
                auto a1 = Clock::now();
                adapt_us.push_back(std::chrono::duration<double, std::micro>(a1 - a0).count());
            } else if (since_switch == window) {  // enough observations of the new task: adapt
                std::printf("task %d: error before adapting %.4f\n", phase, err);
                auto a0 = Clock::now();
                session.adapt(hist_x.data(), window * fi, hist_y.data(), window * fo, window);
                auto a1 = Clock::now();
                adapt_us.push_back(std::chrono::duration<double, std::micro>(a1 - a0).count());
            } else if (since_switch > window) {
                err_sum += err;
                ++err_n;
            }

            next += period;
            std::this_thread::sleep_until(next);
        }
        std::printf("  task %d: mean error after adapting %.4f\n", phase, err_sum / std::max(err_n, 1));
        std::printf("predict latency (1 example): p50 %.2f us, p99 %.2f us, max %.2f us over %d ticks\n",
                    percentile(predict_us, 0.5), percentile(predict_us, 0.99),
                    percentile(predict_us, 1.0), ticks);
        if (stream)
            std::printf("observe latency (1 example): p50 %.2f us, p99 %.2f us, max %.2f us over %zu ticks\n",
                        percentile(adapt_us, 0.5), percentile(adapt_us, 0.99), percentile(adapt_us, 1.0),
                        adapt_us.size());
        else
            std::printf("adapt latency (%d examples): p50 %.2f us, max %.2f us over %zu adaptations\n", window,
                        percentile(adapt_us, 0.5), percentile(adapt_us, 1.0), adapt_us.size());
    } catch (const msr::Error& e) {
        std::fprintf(stderr, "msr error %d: %s\n", static_cast<int>(e.status()), e.what());
        return 1;
    }
    return 0;
}
