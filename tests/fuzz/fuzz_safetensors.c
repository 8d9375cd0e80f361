/* tests/fuzz/fuzz_safetensors.c - fuzz entry point for the safetensors parser.
 *
 * Parses the input as a whole safetensors image with st_open_memory, then
 * looks up every tensor and touches the first and last byte of its data, so a
 * view that escapes the input shows up under ASan. Built two ways: as a
 * libFuzzer target with clang (tests/fuzz/run.sh), and with any compiler into
 * fuzz_safetensors_regress, which replays the seed corpus under CTest. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "engine/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void quiet_sink(void *ctx, enum log_level lvl, const char *line)
{
    (void)ctx;
    (void)lvl;
    (void)line;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int quiet;
    if (!quiet) {
        log_set_sink(quiet_sink, NULL);
        quiet = 1;
    }
    struct st_file *f = NULL;
    struct err_msg em;
    memset(&em, 0, sizeof em);
    if (st_open_memory(&f, data, size, "fuzz", &em) != ERR_OK) {
        if (f || memchr(em.text, '\0', sizeof em.text) == NULL || em.text[0] == '\0')
            abort(); /* a failure must leave *out alone and explain itself */
        return 0;
    }
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < st_count(f); i++) {
        struct tensor t;
        const char *name = st_name(f, i);
        if (!name || st_find(f, name, &t) != ERR_OK)
            continue;
        size_t esz = dtype_size(t.dtype);
        if (esz == 0 || (uintptr_t)t.data % esz != 0 || !(t.scale > 0.0f))
            abort();
        size_t bytes = (size_t)tensor_nelem(&t) * esz;
        if (bytes) {
            sink ^= ((const uint8_t *)t.data)[0];
            sink ^= ((const uint8_t *)t.data)[bytes - 1];
            (void)dtype_load_f32(t.dtype, t.data, bytes / esz - 1);
        }
    }
    struct tensor t;
    (void)st_find(f, "", &t);
    (void)st_metadata(f, "format");
    (void)sink;
    st_close(f);
    return 0;
}
