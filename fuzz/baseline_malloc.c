/*
 * baseline_malloc.c -- the yardstick for the fuzz targets' speed, not a target: the minimal
 * allocate/free libFuzzer harness the issue quotes (~65,000 exec/s on this machine under ASan).
 * It reads ops with the same ks_byte_reader-style rule (one byte an op, below a bound) over
 * plain malloc/free with up to 64 live blocks and no verifier, so that `make fuzz` can print our
 * targets' exec/s as a ratio of this figure measured in the same run.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BASELINE_MAX_LIVE 64u

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    void *live[BASELINE_MAX_LIVE];
    unsigned live_count = 0;
    for (size_t index = 0; index < size; index++) {
        uint8_t byte = data[index];
        if ((byte & 1u) == 0 && live_count < BASELINE_MAX_LIVE) {
            size_t block_bytes = (size_t)(byte >> 1) * 16u + 1u;
            live[live_count] = malloc(block_bytes);
            if (live[live_count] != NULL)
                memset(live[live_count++], byte, block_bytes);
        } else if (live_count > 0) {
            unsigned k = (byte >> 1) % live_count;
            free(live[k]);
            live[k] = live[--live_count];
        }
    }
    while (live_count > 0)
        free(live[--live_count]);
    return 0;
}
