// msr.hpp: a header-only C++17 RAII wrapper over libmsr (msr.h).
//
// Errors: every failing call throws msr::Error, which carries the msr_status (status()) and
// the library's message (what()). Nothing else throws, except std::bad_alloc from the few
// calls that return a std::vector (Session::save_state). The hot-path calls
// (Session::predict, Session::adapt) allocate nothing themselves.
//
// Ownership: msr::Model and msr::Session are move-only owners of the C handles. A Model may
// be shared across threads (const methods only); a Session belongs to one thread at a time.
// A Session keeps its model alive: destroying the Model first is fine.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "msr.h"

namespace msr {

/// A failed libmsr call.
class Error : public std::runtime_error {
public:
    Error(msr_status status, const std::string& message)
        : std::runtime_error(message), status_(status) {}
    /// The status the call returned.
    msr_status status() const noexcept { return status_; }

private:
    msr_status status_;
};

namespace detail {
inline void check(msr_status status) {
    if (status != MSR_OK) throw Error(status, msr_last_error());
}
}  // namespace detail

/// The library version.
inline std::string version() { return msr_version(); }

/// A loaded model: immutable, shareable across threads.
class Model {
public:
    /// Loads a .msr file.
    static Model load(const std::string& path) {
        msr_model* m = nullptr;
        detail::check(msr_model_load_file(path.c_str(), &m));
        return Model(m);
    }
    /// Loads a .msr file from memory (copied).
    static Model from_bytes(const void* data, std::size_t len) {
        msr_model* m = nullptr;
        detail::check(msr_model_load_bytes(static_cast<const uint8_t*>(data), len, &m));
        return Model(m);
    }

    Model(Model&& other) noexcept : m_(std::exchange(other.m_, nullptr)) {}
    Model& operator=(Model&& other) noexcept {
        if (this != &other) {
            msr_model_free(&m_);
            m_ = std::exchange(other.m_, nullptr);
        }
        return *this;
    }
    Model(const Model&) = delete;
    Model& operator=(const Model&) = delete;
    ~Model() { msr_model_free(&m_); }

    /// Shapes, loss and sizes.
    msr_model_info info() const {
        msr_model_info i{};
        detail::check(msr_model_get_info(m_, &i));
        return i;
    }
    /// The C handle (still owned by this object).
    const msr_model* get() const noexcept { return m_; }

private:
    explicit Model(msr_model* m) : m_(m) {}
    msr_model* m_;
};

/// Session options; defaults are the model's.
struct SessionOptions {
    msr_backend backend = MSR_BACKEND_CPU;
    std::size_t inner_steps = 0;  ///< 0: the model's
    float lr_scale = 0.0f;        ///< 0: 1.0
    std::size_t capacity = 0;     ///< examples per chunk; 0: 32
};

/// One task's adapted state. One thread at a time.
class Session {
public:
    explicit Session(const Model& model, const SessionOptions& o = {}) {
        msr_session_options c{};
        c.backend = static_cast<int32_t>(o.backend);
        c.inner_steps = o.inner_steps;
        c.lr_scale = o.lr_scale;
        c.capacity = o.capacity;
        detail::check(msr_session_new(model.get(), &c, &s_));
    }
    Session(Session&& other) noexcept : s_(std::exchange(other.s_, nullptr)) {}
    Session& operator=(Session&& other) noexcept {
        if (this != &other) {
            msr_session_free(&s_);
            s_ = std::exchange(other.s_, nullptr);
        }
        return *this;
    }
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;
    ~Session() { msr_session_free(&s_); }

    /// Adapts the meta-learned initialisation to n examples: x [n, input_len], y [n,
    /// output_len]. Returns the support loss after adapting. Throws msr::Error (status
    /// MSR_ERR_DIVERGED leaves the session as it was).
    float adapt(const float* x, std::size_t x_len, const float* y, std::size_t y_len, std::size_t n) {
        float loss = 0.0f;
        detail::check(msr_session_adapt(s_, x, x_len, y, y_len, n, &loss));
        return loss;
    }
    /// Like adapt, but from the current parameters, with `steps` steps of the current
    /// algorithm (e.g. one Gauss-Newton step after SGD's for a model trained with
    /// --inner sgd+gn).
    float refine(const float* x, std::size_t x_len, const float* y, std::size_t y_len, std::size_t n,
                 std::size_t steps = 1) {
        float loss = 0.0f;
        detail::check(msr_session_refine(s_, x, x_len, y, y_len, n, steps, &loss));
        return loss;
    }
    /// Adapts a classification model from class labels.
    float adapt_labels(const float* x, std::size_t x_len, const int32_t* labels, std::size_t n) {
        float loss = 0.0f;
        detail::check(msr_session_adapt_labels(s_, x, x_len, labels, n, &loss));
        return loss;
    }
    /// Predicts out [n, output_len] for x [n, input_len].
    void predict(const float* x, std::size_t x_len, std::size_t n, float* out, std::size_t out_len) {
        detail::check(msr_session_predict(s_, x, x_len, n, out, out_len));
    }
    /// Back to the meta-learned initialisation.
    void reset() { detail::check(msr_session_reset(s_)); }
    /// Adapt by damped Gauss-Newton (`damping` scales the model's dampings) or by SGD.
    /// Allocates when Gauss-Newton is switched on: call it at set-up.
    void set_inner(msr_inner inner, float damping = 1.0f) {
        detail::check(msr_session_set_inner(s_, static_cast<int32_t>(inner), damping));
    }
    /// Folds n new examples into the adaptation (recursive least squares; needs
    /// Gauss-Newton on). Allocation-free.
    void observe(const float* x, std::size_t x_len, const float* y, std::size_t y_len, std::size_t n) {
        detail::check(msr_session_observe(s_, x, x_len, y, y_len, n));
    }
    /// The forgetting factor of observe, in (0, 1].
    void set_forgetting(float gamma) { detail::check(msr_session_set_forgetting(s_, gamma)); }
    /// The most work (multiply-adds) a call on n examples does with the session's current
    /// algorithm and steps: what every call is bounded by (docs/model-format.md, "Limits").
    uint64_t cost(msr_call call, std::size_t n) {
        uint64_t work = 0;
        detail::check(msr_session_cost(s_, static_cast<int32_t>(call), n, &work));
        return work;
    }
    /// The adapted state, to restore later with load_state.
    std::vector<uint8_t> save_state(std::size_t state_len) const {
        std::vector<uint8_t> buf(state_len);
        std::size_t written = 0;
        detail::check(msr_session_save_state(s_, buf.data(), buf.size(), &written));
        buf.resize(written);
        return buf;
    }
    /// Restores a state saved from a session of the same model.
    void load_state(const std::vector<uint8_t>& state) {
        detail::check(msr_session_load_state(s_, state.data(), state.size()));
    }

private:
    msr_session* s_ = nullptr;
};

}  // namespace msr
