/*
 * pattern.c -- the data device and CPU agree on: a seeded pattern and a streaming checksum.
 *
 * Pattern: the 8-byte little-endian word at byte offset 8k is base(seed) + k * step(seed), step
 * odd, so within one frame every word differs from every other (a block copied to the wrong
 * place, or a stale page, shows) and two seeds give different frames. Byte-granular offsets are
 * allowed: a byte's value depends only on (seed, its offset), whatever piece it is written in.
 * One multiply-add per word; the compiler vectorises the aligned middle.
 *
 * Checksum: Fletcher-style over little-endian 64-bit words with wrapping sums (sum1 += w,
 * sum2 += sum1), a partial word carried between calls, and the length folded in at the end, so
 * the value depends on the bytes and their order, not on how they were split into segments.
 */
#include <string.h>

#include "dma_internal.h"

typedef struct pattern_key {
    uint64_t base, step;
} pattern_key;

static pattern_key key_of(uint64_t seed)
{
    uint64_t state = seed;
    pattern_key key;
    key.base = ks_dma_random_next(&state);
    key.step = ks_dma_random_next(&state) | 1u;
    return key;
}

static uint64_t word_at(pattern_key key, uint64_t word_index)
{
    return key.base + word_index * key.step;
}

static unsigned char byte_at(pattern_key key, uint64_t offset)
{
    return (unsigned char)(word_at(key, offset / 8u) >> (8u * (offset % 8u)));
}

/* One 8-byte access each, not eight: under ASan every byte access is checked on its own, and the
 * backend that would merge them runs after the instrumentation. */
static void store_le64(unsigned char *dst, uint64_t value)
{
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    value = __builtin_bswap64(value);
#endif
    memcpy(dst, &value, 8);
}

static uint64_t load_le64(const unsigned char *src)
{
    uint64_t value;
    memcpy(&value, src, 8);
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    value = __builtin_bswap64(value);
#endif
    return value;
}

void ks_dma_pattern_fill(void *dst, size_t bytes, uint64_t seed, uint64_t offset)
{
    pattern_key key = key_of(seed);
    unsigned char *out = dst;
    size_t i = 0;
    for (; i < bytes && (offset + i) % 8u != 0; i++)
        out[i] = byte_at(key, offset + i);
    for (uint64_t word = (offset + i) / 8u; i + 8u <= bytes; i += 8u, word++)
        store_le64(out + i, word_at(key, word));
    for (; i < bytes; i++)
        out[i] = byte_at(key, offset + i);
}

size_t ks_dma_pattern_check(const void *src, size_t bytes, uint64_t seed, uint64_t offset)
{
    pattern_key key = key_of(seed);
    const unsigned char *in = src;
    size_t i = 0;
    for (; i < bytes && (offset + i) % 8u != 0; i++)
        if (in[i] != byte_at(key, offset + i))
            return i;
    for (uint64_t word = (offset + i) / 8u; i + 8u <= bytes; i += 8u, word++) {
        if (load_le64(in + i) == word_at(key, word))
            continue;
        for (size_t j = i;; j++)
            if (in[j] != byte_at(key, offset + j))
                return j;
    }
    for (; i < bytes; i++)
        if (in[i] != byte_at(key, offset + i))
            return i;
    return SIZE_MAX;
}

void ks_dma_checksum_init(ks_dma_checksum_state *state)
{
    memset(state, 0, sizeof *state);
}

static void checksum_word(ks_dma_checksum_state *state, uint64_t word)
{
    state->sum1 += word;
    state->sum2 += state->sum1;
}

void ks_dma_checksum_update(ks_dma_checksum_state *state, const void *data, size_t bytes)
{
    const unsigned char *in = data;
    state->total_bytes += bytes;
    while (bytes > 0 && state->partial_bytes != 0) {
        state->partial |= (uint64_t)*in++ << (8u * state->partial_bytes);
        bytes--;
        if (++state->partial_bytes == 8u) {
            checksum_word(state, state->partial);
            state->partial = 0;
            state->partial_bytes = 0;
        }
    }
    uint64_t sum1 = state->sum1, sum2 = state->sum2;
    for (; bytes >= 8u; bytes -= 8u, in += 8) {
        sum1 += load_le64(in);
        sum2 += sum1;
    }
    state->sum1 = sum1;
    state->sum2 = sum2;
    for (; bytes > 0; bytes--)
        state->partial |= (uint64_t)*in++ << (8u * state->partial_bytes++);
}

uint64_t ks_dma_checksum_final(const ks_dma_checksum_state *state)
{
    ks_dma_checksum_state last = *state;
    if (last.partial_bytes != 0)
        checksum_word(&last, last.partial);
    uint64_t mixed = last.sum2 ^ (last.sum1 * 0x9E3779B97F4A7C15ull) ^ last.total_bytes;
    return ks_dma_random_next(&mixed);
}

uint64_t ks_dma_checksum(const void *data, size_t bytes)
{
    ks_dma_checksum_state state;
    ks_dma_checksum_init(&state);
    ks_dma_checksum_update(&state, data, bytes);
    return ks_dma_checksum_final(&state);
}
