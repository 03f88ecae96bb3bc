/* Load an msr model, adapt it to a new task from a few examples, predict, print.
 *
 *   adapt MODEL.msr [regress | classify [EPISODE]]
 *
 * Regression (the default): the task is a 1-D valid convolution with a filter the model has
 * never seen (the rank1 family); the program adapts on 1 example and reports the error on
 * 19 others, before and after adapting. Classification: adapts on labelled support examples
 * and reports the query accuracy. The episode comes from a file written by
 * `trainer episode` (e.g. 5 glyph classes never seen in training, 1 image each, and 25
 * query images), or, without one, is a synthetic task whose class is the strongest of the
 * first `classes` inputs.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msr.h"

/* A small deterministic generator, so the output is the same on every run. */
static unsigned long long rng_state = 0x12345678ULL;
static double uniform(void) {
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return ((rng_state >> 11) + 0.5) / 9007199254740992.0;
}
static float normal(void) {
    return (float)(sqrt(-2.0 * log(uniform())) * cos(6.283185307179586 * uniform()));
}

#define CHECK(call)                                                             \
    do {                                                                        \
        msr_status status_ = (call);                                            \
        if (status_ != MSR_OK) {                                                \
            fprintf(stderr, "%s failed (%d): %s\n", #call, status_, msr_last_error()); \
            goto done;                                                          \
        }                                                                       \
    } while (0)

/* Reads an episode file (the layout is in docs/file-formats.md; little-endian, as on x86
 * and ARM). Returns 0 on success; *x and *labels are malloc'ed, support first. */
static int read_episode(const char *path, size_t input_len, size_t *support, size_t *query,
                        float **x, int32_t **labels) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "%s: cannot open\n", path);
        return 1;
    }
    char magic[8];
    uint32_t head[4];
    int rc = 1;
    if (fread(magic, 1, 8, f) != 8 || memcmp(magic, "MSREPIS1", 8) != 0 ||
        fread(head, sizeof head[0], 4, f) != 4) {
        fprintf(stderr, "%s: not an episode file\n", path);
        goto out;
    }
    if (head[2] != input_len) {
        fprintf(stderr, "%s: inputs of %u values, the model takes %zu\n", path, head[2], input_len);
        goto out;
    }
    *support = head[0];
    *query = head[1];
    size_t n = *support + *query;
    *x = malloc(n * input_len * sizeof **x);
    *labels = malloc(n * sizeof **labels);
    if (!*x || !*labels) goto out;
    if (fread(*x, sizeof **x, *support * input_len, f) != *support * input_len ||
        fread(*labels, sizeof **labels, *support, f) != *support ||
        fread(*x + *support * input_len, sizeof **x, *query * input_len, f) != *query * input_len ||
        fread(*labels + *support, sizeof **labels, *query, f) != *query) {
        fprintf(stderr, "%s: truncated\n", path);
        goto out;
    }
    rc = 0;
out:
    fclose(f);
    return rc;
}

static double mse(const float *a, const float *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)(a[i] - b[i]) * (a[i] - b[i]);
    return s / (double)n;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.msr [regress | classify [EPISODE]]\n", argv[0]);
        return 2;
    }
    int classify = argc > 2 && strcmp(argv[2], "classify") == 0;
    int rc = 1;
    msr_model *model = NULL;
    msr_session *session = NULL;
    float *x = NULL, *y = NULL, *pred = NULL;
    int32_t *labels = NULL;

    printf("libmsr %s\n", msr_version());
    CHECK(msr_model_load_file(argv[1], &model));
    msr_model_info info;
    CHECK(msr_model_get_info(model, &info));
    printf("model: %zu inputs, %zu outputs, %zu adapted parameters, %zu inner step(s)\n",
           info.input_len, info.output_len, info.adapted_len, info.inner_steps);

    msr_session_options options;
    memset(&options, 0, sizeof options); /* zeros: defaults */
    CHECK(msr_session_new(model, &options, &session));

    size_t support = classify ? 5 : 1, query = classify ? 20 : 19;
    const size_t fi = info.input_len, fo = info.output_len;
    const char *episode = classify && argc > 3 ? argv[3] : NULL;
    if (episode) {
        if (read_episode(episode, fi, &support, &query, &x, &labels) != 0) goto done;
    } else {
        x = malloc((support + query) * fi * sizeof *x);
        labels = malloc((support + query) * sizeof *labels);
        if (!x || !labels) goto done;
        for (size_t i = 0; i < (support + query) * fi; i++) x[i] = normal();
    }
    const size_t n = support + query;
    y = malloc(n * fo * sizeof *y);
    pred = malloc(query * fo * sizeof *pred);
    if (!y || !pred) goto done;

    if (!classify) {
        if (info.loss != MSR_LOSS_MSE || fi != fo + 2) {
            fprintf(stderr, "regression mode needs a rank1-shaped model (70 -> 68)\n");
            goto done;
        }
        const float filter[3] = {0.8f, -1.1f, 0.4f};
        for (size_t e = 0; e < n; e++)
            for (size_t p = 0; p < fo; p++)
                y[e * fo + p] = filter[0] * x[e * fi + p] + filter[1] * x[e * fi + p + 1] +
                                filter[2] * x[e * fi + p + 2];
        const float *xq = x + support * fi, *yq = y + support * fo;
        CHECK(msr_session_predict(session, xq, query * fi, query, pred, query * fo));
        printf("query MSE before adapting: %.4f\n", mse(pred, yq, query * fo));
        float loss = 0.0f;
        CHECK(msr_session_adapt(session, x, support * fi, y, support * fo, support, &loss));
        CHECK(msr_session_predict(session, xq, query * fi, query, pred, query * fo));
        printf("query MSE after adapting on %zu example(s): %.4f (support loss %.4f)\n", support,
               mse(pred, yq, query * fo), loss);
    } else {
        if (info.loss != MSR_LOSS_CROSS_ENTROPY) {
            fprintf(stderr, "classification mode needs a classification model\n");
            goto done;
        }
        for (size_t e = 0; e < n && !episode; e++) {
            size_t best = 0;
            for (size_t c = 1; c < fo && c < fi; c++)
                if (x[e * fi + c] > x[e * fi + best]) best = c;
            labels[e] = (int32_t)best;
        }
        float loss = 0.0f;
        CHECK(msr_session_adapt_labels(session, x, support * fi, labels, support, &loss));
        CHECK(msr_session_predict(session, x + support * fi, query * fi, query, pred, query * fo));
        size_t correct = 0;
        for (size_t e = 0; e < query; e++) {
            size_t arg = 0;
            for (size_t c = 1; c < fo; c++)
                if (pred[e * fo + c] > pred[e * fo + arg]) arg = c;
            correct += (int32_t)arg == labels[support + e];
        }
        printf("adapted on %zu labelled example(s), support loss %.4f; query accuracy %zu/%zu\n",
               support, loss, correct, query);
    }

    /* Keep the adapted state (a few hundred bytes), reset, restore. */
    {
        unsigned char *state = malloc(info.state_len);
        size_t written = 0;
        if (!state) goto done;
        msr_status s1 = msr_session_save_state(session, state, info.state_len, &written);
        msr_status s2 = msr_session_reset(session);
        msr_status s3 = msr_session_load_state(session, state, written);
        free(state);
        if (s1 != MSR_OK || s2 != MSR_OK || s3 != MSR_OK) {
            fprintf(stderr, "state round trip failed: %s\n", msr_last_error());
            goto done;
        }
        printf("saved and restored the adapted state (%zu bytes)\n", written);
    }

    /* Errors are values: a NULL input is refused with a message, nothing crashes. */
    if (msr_session_predict(session, NULL, 0, 1, pred, fo) == MSR_ERR_NULL)
        printf("a NULL input is refused: %s\n", msr_last_error());
    rc = 0;

done:
    msr_session_free(&session);
    msr_model_free(&model);
    free(x);
    free(y);
    free(pred);
    free(labels);
    return rc;
}
