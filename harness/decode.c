/*
 * decode.c -- turns fuzzer bytes into a workload: a bounded byte reader, a config decoder and an
 * op decoder, shared by every fuzz target so that they all read inputs the same way.
 *
 * Design. The reader never reads past its input: past the end every read yields 0, so a short
 * input still decodes to a complete, valid config and a fuzzer's mutations near the end never
 * fault. Values are drawn from small tables of interesting sizes and alignments (0 = "no
 * requirement", odd sizes, a page, a page plus a bit, 1 MiB) instead of raw integers, because a
 * uniformly random 32-bit FrameSize almost never hits an edge. Everything decoded is valid by
 * construction: framings stay within what the entry says it serves (max_frame_bytes,
 * max_align_bytes), heap 0 is shared only by pins of one entry (a heap serves one allocator
 * family), and an op is always valid for the live view it was decoded against (FREE/TOUCH on an
 * empty pin become ALLOCATE, k is drawn below the live count). A byte sequence therefore maps to
 * exactly one op stream for a given allocator behaviour, which is what lets a crashing input be
 * minimised and replayed.
 * DMA. When a pin's entry has KS_CAP_DMA, one more config byte picks the device from a table
 * (coherent or not, IOMMU or not, scatter/gather, 64- or 32-bit mask), and the op byte's two
 * top selector values become a DMA op (capture, render or loopback, chosen by one more byte);
 * without a device nothing changes, so corpora recorded before DMA decode as they did. DMA ops
 * obey the engine's rules: never on an empty pin (ALLOCATE instead), loopback only with two
 * frames live and k below the newest (capture instead).
 * Cost: O(1) per op, no allocation. Thread safety: a reader belongs to one thread.
 */
#include <stdio.h>
#include <string.h>

#include "workload.h"

#define DECODE_MAX_PINS 4u
#define DECODE_MAX_FRAMES 64u
#define DECODE_SHARED_HEAP_BYTES ((size_t)8 << 20)
/* Per-pin flag byte. */
#define DECODE_FLAG_MUST_ALLOCATE 0x01u
#define DECODE_FLAG_SHARE_HEAP 0x02u

_Static_assert(DECODE_MAX_PINS <= KS_MAX_PINS, "decoded pins must fit a workload config");
_Static_assert(KS_MAX_HEAPS >= 1, "the decoder uses heap 0");

static const uint32_t frame_bytes_table[] = {0, 1, 8, 24, 64, 100, 512, 4096, 4100, 65536, 1u << 20};
static const uint32_t align_mask_table[] = {0, 7, 15, 63, 255, 4095};
/* Every device here has scatter/gather or an IOMMU, which dma_sg needs to open at all. Each runs
 * its descriptors inline (harness/dma/device.c): the same outcomes as a device on its own thread,
 * without a thread hand-off per DMA op, and with callbacks at a point the input decides. */
static const char *const dma_options_table[] = {
    "mask=64,sg=1,inline=1",
    "mask=32,iommu=1,inline=1",
    "mask=32,coherent=0,sg=1,inline=1",
    "mask=32,coherent=0,sg=1,iommu=1,inline=1",
    "mask=32,sg=1,iommu=1,max_seg=64K,boundary=64K,inline=1",
    "mask=40,coherent=0,sg=1,max_seg=16K,inline=1",
};

/* ---- the reader ----------------------------------------------------------------------------- */

uint8_t ks_reader_u8(ks_byte_reader *reader)
{
    if (reader->offset >= reader->size_bytes)
        return 0;
    return reader->data[reader->offset++];
}

uint32_t ks_reader_u32(ks_byte_reader *reader)
{
    uint32_t value = 0;
    for (unsigned shift = 0; shift < 32; shift += 8)
        value |= (uint32_t)ks_reader_u8(reader) << shift;
    return value;
}

uint32_t ks_reader_below(ks_byte_reader *reader, uint32_t bound)
{
    if (bound <= 1)
        return 0; /* one possible value: no byte needed */
    uint32_t value = 0;
    uint64_t reach = 1; /* how many distinct values the bytes read so far express */
    for (unsigned shift = 0; reach < bound; shift += 8) {
        value |= (uint32_t)ks_reader_u8(reader) << shift;
        reach <<= 8;
    }
    return value % bound;
}

bool ks_reader_done(const ks_byte_reader *reader)
{
    return reader->offset >= reader->size_bytes;
}

/* ---- config --------------------------------------------------------------------------------- */

/* The largest alignment mask 2^k - 1 whose alignment does not exceed limit_bytes (0 = no limit). */
static uint32_t clamp_align_mask(uint32_t mask, size_t limit_bytes)
{
    if (limit_bytes == 0 || (uint64_t)mask + 1 <= limit_bytes)
        return mask;
    uint64_t align_bytes = 1;
    while (align_bytes * 2 <= limit_bytes)
        align_bytes *= 2;
    return (uint32_t)(align_bytes - 1);
}

static uint32_t clamp_frame_bytes(uint32_t frame_bytes, size_t limit_bytes)
{
    if (limit_bytes != 0 && frame_bytes > limit_bytes)
        return (uint32_t)limit_bytes;
    return frame_bytes;
}

/* Decodes pin i; shared_entry is the entry that owns heap 0 so far (NULL: nobody). */
static void decode_pin(ks_byte_reader *reader, const ks_allocator_entry *entry, ks_pin_config *pin,
                       const ks_allocator_entry **shared_entry)
{
    size_t frame_index = ks_reader_below(reader, sizeof frame_bytes_table / sizeof frame_bytes_table[0]);
    size_t align_index = ks_reader_below(reader, sizeof align_mask_table / sizeof align_mask_table[0]);
    uint32_t frames = ks_reader_below(reader, DECODE_MAX_FRAMES + 1);
    uint8_t flags = ks_reader_u8(reader);

    memset(pin, 0, sizeof *pin);
    pin->entry = entry;
    snprintf(pin->allocator, sizeof pin->allocator, "%s", entry->name != NULL ? entry->name : "");
    pin->framing.PoolType = NonPagedPool;
    pin->framing.Frames = frames;
    pin->framing.FrameSize = clamp_frame_bytes(frame_bytes_table[frame_index], entry->max_frame_bytes);
    pin->framing.FileAlignment = clamp_align_mask(align_mask_table[align_index], entry->max_align_bytes);
    if (flags & DECODE_FLAG_MUST_ALLOCATE)
        pin->framing.RequirementsFlags |= KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE;
    pin->heap_index = -1;
    bool share = (flags & DECODE_FLAG_SHARE_HEAP) && (entry->caps & KS_CAP_SHARED_HEAP);
    if (share && (*shared_entry == NULL || *shared_entry == entry)) {
        *shared_entry = entry;
        pin->heap_index = 0;
    }
}

void ks_decode_config(ks_byte_reader *reader, const ks_allocator_entry *const *entries, size_t entry_count,
                      ks_workload_config *config)
{
    memset(config, 0, sizeof *config);
    if (entries == NULL || entry_count == 0)
        return; /* pin_count 0: the engine refuses it with a message */
    config->pin_count = 1 + ks_reader_below(reader, DECODE_MAX_PINS);
    const ks_allocator_entry *shared_entry = NULL;
    for (unsigned i = 0; i < config->pin_count; i++)
        decode_pin(reader, entries[i % entry_count], &config->pins[i], &shared_entry);
    if (shared_entry != NULL) {
        config->heap_count = 1;
        config->heap_bytes[0] = DECODE_SHARED_HEAP_BYTES;
    }
    bool dma = false;
    for (unsigned i = 0; i < config->pin_count; i++)
        dma = dma || (config->pins[i].entry->caps & KS_CAP_DMA) != 0;
    if (dma) {
        size_t index = ks_reader_below(reader, sizeof dma_options_table / sizeof dma_options_table[0]);
        snprintf(config->dma_options, sizeof config->dma_options, "%s", dma_options_table[index]);
    }
}

/* ---- ops ------------------------------------------------------------------------------------ */

/* The low three bits of the op byte pick the kind: allocate 4/8, free 3/8, touch 1/8; the rest
 * picks the pin. */
static ks_op_kind kind_of_byte(uint8_t byte)
{
    unsigned selector = byte & 7u;
    if (selector < 4)
        return KS_OP_ALLOCATE;
    return selector < 7 ? KS_OP_FREE : KS_OP_TOUCH;
}

/* With a device: allocate 3/8, free 2/8, touch 1/8, a DMA op 2/8 (its kind from the next byte). */
static ks_op_kind dma_kind_of_byte(ks_byte_reader *reader, uint8_t byte)
{
    unsigned selector = byte & 7u;
    if (selector < 3)
        return KS_OP_ALLOCATE;
    if (selector < 5)
        return KS_OP_FREE;
    if (selector == 5)
        return KS_OP_TOUCH;
    return (ks_op_kind)(KS_OP_DMA_CAPTURE + ks_reader_below(reader, KS_OP_DMA_LAST - KS_OP_DMA_FIRST + 1));
}

bool ks_decode_op(ks_byte_reader *reader, const ks_live_view *view, ks_op *op)
{
    if (ks_reader_done(reader) || view->pin_count == 0)
        return false;
    uint8_t byte = ks_reader_u8(reader);
    unsigned pin_count = view->pin_count < KS_MAX_PINS ? view->pin_count : KS_MAX_PINS;
    memset(op, 0, sizeof *op);
    op->kind = (uint8_t)(view->dma ? dma_kind_of_byte(reader, byte) : kind_of_byte(byte));
    op->pin = (uint8_t)((unsigned)(byte >> 3) % pin_count);
    uint32_t live = view->live[op->pin];
    if (op->kind == KS_OP_DMA_LOOPBACK && live < 2)
        op->kind = KS_OP_DMA_CAPTURE; /* a copy needs a second frame */
    if (op->kind != KS_OP_ALLOCATE) {
        if (live == 0)
            op->kind = KS_OP_ALLOCATE;
        else
            op->arg = ks_reader_below(reader, op->kind == KS_OP_DMA_LOOPBACK ? live - 1 : live);
    }
    return true;
}

/* ---- Fitting the heaps to the input (workload.h) ------------------------------------------- */

#define FIT_CONTROL_SLACK_BYTES ((size_t)64 << 10)
#define FIT_FRAME_SLACK_BYTES 64u

static size_t ceil_pow2(size_t value)
{
    size_t power = 1;
    while (power < value)
        power <<= 1;
    return power;
}

void ks_decode_fit_heaps(ks_workload_config *config, size_t op_bytes)
{
    for (unsigned h = 0; h < config->heap_count; h++) {
        size_t largest = 0, reserved = 0;
        for (unsigned i = 0; i < config->pin_count; i++) {
            const ks_pin_config *pin = &config->pins[i];
            if (pin->heap_index != (int)h)
                continue;
            /* 0 asks for the allocator's default, which it writes back: count the most it can be
             * (the fuzz FrameSize cap is above every default FrameSize, KS_DECODE_FIT_DEFAULT_FRAMES above
             * every default Frames). */
            size_t frame_bytes = pin->framing.FrameSize != 0 ? pin->framing.FrameSize : KS_FUZZ_MAX_FRAME_BYTES;
            size_t need = frame_bytes + pin->framing.FileAlignment + FIT_FRAME_SLACK_BYTES;
            largest = need > largest ? need : largest;
            if (pin->framing.RequirementsFlags & KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE)
                reserved += pin->framing.Frames != 0 ? pin->framing.Frames : KS_DECODE_FIT_DEFAULT_FRAMES;
        }
        if (largest == 0)
            continue; /* no pin on it: leave it as decoded */
        size_t slot = 2 * ceil_pow2(largest);
        size_t slots = op_bytes + reserved + 2; /* + the two ends lost to block alignment */
        if (slots > config->heap_bytes[h] / slot)
            continue; /* could need it all */
        size_t fitted = slots * slot + FIT_CONTROL_SLACK_BYTES;
        if (fitted < config->heap_bytes[h])
            config->heap_bytes[h] = fitted;
    }
}
