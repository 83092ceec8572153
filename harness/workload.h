/*
 * workload.h -- the op model, seeded profiles, the fuzz decoder and the engine that runs ops
 * against one or several allocator instances.
 *
 * An op names a pin and, for FREE and TOUCH, the k-th live frame of that pin in allocation order
 * (k = 0 is the oldest). Ops carry no addresses, so a run is reproducible from its ops alone: a
 * profile, the fuzz decoder and a trace file are three ways of producing the same op stream, and
 * the engine is the one place that executes it (bare or through the verifier, recording a trace
 * or not).
 */
#ifndef KS_WORKLOAD_H
#define KS_WORKLOAD_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "ksalloc.h"

struct ks_verifier;
struct ks_trace_writer;
struct ks_dma_device;

#define KS_MAX_PINS 8u
#define KS_MAX_HEAPS 4u
#define KS_ALLOCATOR_NAME_BYTES 256u

typedef enum ks_op_kind {
    KS_OP_ALLOCATE = 0, /* Allocate on pin */
    KS_OP_FREE = 1,     /* Free the arg-th live frame of pin */
    KS_OP_TOUCH = 2,    /* write the arg-th live frame of pin (verifier: check and refill pattern) */
    KS_OP_DMA_FIRST = 16, /* DMA ops (harness/dma/) take kinds from here on */
    /* The DMA ops need the workload's device (ks_workload_config.dma_options, or a KS_CAP_DMA
     * pin). A frame of a KS_CAP_DMA allocator is used where its allocator mapped it (the frame
     * registry, ks_dma_frame_transfer, with the syncs a correct driver makes); any other frame is
     * mapped with ks_dma_map_single for the op and unmapped after it, as a driver does with a
     * buffer it did not allocate for DMA. A frame of FrameSize 0 has nothing to move: no-op. */
    KS_OP_DMA_CAPTURE = KS_OP_DMA_FIRST, /* device writes a pattern over frame arg; CPU checks */
    KS_OP_DMA_RENDER = 17,               /* CPU fills frame arg; device reads it and checksums */
    KS_OP_DMA_LOOPBACK = 18,             /* CPU fills frame arg; device copies it into the newest
                                            live frame; CPU checks. arg < live - 1 */
    KS_OP_DMA_LAST = KS_OP_DMA_LOOPBACK,
} ks_op_kind;

typedef struct ks_op {
    uint8_t kind;   /* ks_op_kind */
    uint8_t pin;    /* < config pin_count */
    uint8_t thread; /* for multi-threaded schedules; 0 in single-threaded runs */
    uint8_t flags;  /* reserved, 0 */
    uint32_t arg;   /* FREE/TOUCH/DMA_*: live index k */
} ks_op;
_Static_assert(sizeof(ks_op) == 8, "ks_op is packed into traces and fuzz corpora as 8 bytes");

typedef struct ks_pin_config {
    const ks_allocator_entry *entry;       /* resolved by the caller; NULL straight after parsing */
    char allocator[KS_ALLOCATOR_NAME_BYTES]; /* how the allocator was named: "pool", "plugin:x.so" */
    KSALLOCATOR_FRAMING framing;
    int heap_index; /* index into heap_bytes, or -1 for a private heap */
} ks_pin_config;

#define KS_DMA_OPTIONS_BYTES 128u

typedef struct ks_workload_config {
    /* The emulated DMA device (harness/dma/dma.h, ks_dma_options_parse syntax); "" = none, unless
     * a pin's entry has KS_CAP_DMA, which gets a device with default options. */
    char dma_options[KS_DMA_OPTIONS_BYTES];
    unsigned pin_count;
    ks_pin_config pins[KS_MAX_PINS];
    unsigned heap_count;
    size_t heap_bytes[KS_MAX_HEAPS];
} ks_workload_config;

/* ---- Profiles ------------------------------------------------------------------------------ */

typedef enum ks_profile {
    KS_PROFILE_LIFO,        /* allocate a stack up and down, always freeing the newest */
    KS_PROFILE_FIFO,        /* streaming: a window of frames, always freeing the oldest */
    KS_PROFILE_RANDOM,      /* allocate or free a random live frame, live set near half capacity */
    KS_PROFILE_BURST,       /* fill to capacity, then drain in random order, repeat */
    KS_PROFILE_FRAGMENTING, /* several pins of mixed frame sizes over one shared heap, random order */
    KS_PROFILE_CAPTURE,     /* streaming DMA: allocate, the device fills the frame, free the oldest */
    KS_PROFILE_RENDER,      /* streaming DMA: allocate, the CPU fills, the device reads, free the oldest */
    KS_PROFILE_LOOPBACK,    /* streaming DMA: allocate, the device copies the previous frame into it */
    KS_PROFILE_COUNT
} ks_profile;

const char *ks_profile_name(ks_profile profile);
/* Returns KS_PROFILE_COUNT for an unknown name. */
ks_profile ks_profile_from_name(const char *name);

/* True for the profiles that emit DMA ops (capture, render, loopback). */
bool ks_profile_uses_dma(ks_profile profile);

/* Builds the pins a profile uses for one allocator and a base framing: one pin for most
 * profiles; for fragmenting, three pins of mixed frame sizes sharing heap 0 (private heaps when
 * the allocator cannot share one). The DMA profiles ask for a device (dma_options
 * KS_PROFILE_DEFAULT_DMA_OPTIONS); the caller may overwrite config->dma_options. */
#define KS_PROFILE_DEFAULT_DMA_OPTIONS "mask=64"
NTSTATUS ks_profile_config(ks_profile profile, const ks_allocator_entry *entry, const char *allocator_name,
                           const KSALLOCATOR_FRAMING *base_framing, ks_workload_config *config, ks_error *err);

/* What generators and decoders may see of the engine's state. */
typedef struct ks_live_view {
    unsigned pin_count;
    uint32_t live[KS_MAX_PINS];
    bool last_allocate_failed[KS_MAX_PINS];
    uint32_t frames[KS_MAX_PINS]; /* the framing's Frames after initialisation (0 = unbounded) */
    bool dma;                     /* the workload has a DMA device: DMA ops are valid */
} ks_live_view;

typedef struct ks_generator {
    ks_profile profile;
    uint64_t rng_state;
    unsigned pin_count;
    uint32_t target_live[KS_MAX_PINS];
    uint32_t phase[KS_MAX_PINS]; /* profile-specific: filling or draining */
} ks_generator;

void ks_generator_init(ks_generator *gen, ks_profile profile, uint64_t seed, const ks_live_view *view);
/* The next op, valid for the state in view (never FREE on an empty pin). */
void ks_generator_next(ks_generator *gen, const ks_live_view *view, ks_op *op);

/* ---- Fuzz decoding ------------------------------------------------------------------------- */

/* Reads from the input and never past its end: past the end every read returns 0. */
typedef struct ks_byte_reader {
    const uint8_t *data;
    size_t size_bytes;
    size_t offset;
} ks_byte_reader;

uint8_t ks_reader_u8(ks_byte_reader *reader);
uint32_t ks_reader_u32(ks_byte_reader *reader);
/* A value in [0, bound), bound > 0, using as few bytes as the bound needs. */
uint32_t ks_reader_below(ks_byte_reader *reader, uint32_t bound);
bool ks_reader_done(const ks_byte_reader *reader);

/* Decodes pins, framings and heaps for the given allocators (entries[i % entry_count] serves pin
 * i) from the head of the input. Framings stay within what each entry says it serves. */
void ks_decode_config(ks_byte_reader *reader, const ks_allocator_entry *const *entries, size_t entry_count,
                      ks_workload_config *config);
/* What a fuzz run decodes with, shared by the fuzz targets (fuzz/fuzz_helpers.c) and `ksalloc
 * replay --fuzz-input`, so that an input replays exactly as it ran:
 * KS_FUZZ_SELF_CHECK_EVERY_OPS, the verifier's periodic self-check cadence (it also runs at
 * every DeleteAllocator). Measured: after every op, buddy's self-check (a walk of the whole
 * arena) took 70% of fuzz_alloc_buddy's time; every 16 ops keeps a corrupting op within 16 ops
 * of its detection.
 * KS_FUZZ_MAX_FRAME_BYTES, the FrameSize cap (the decoder's table reaches 1 MiB): a page plus 4
 * bytes, so the page and page-plus-a-bit edges stay in reach. Measured (make fuzz, ASan):
 * uncapped, pool ran ~40 inputs/s, nearly all of it faulting in fresh pages and writing and
 * checking the verifier's patterns; at 64 KiB ~100-200/s. Larger frames are covered by the
 * profiles in `make test`. Applied by lowering the entry's max_frame_bytes, which
 * ks_decode_config clamps to. */
#define KS_FUZZ_SELF_CHECK_EVERY_OPS 16u
#define KS_FUZZ_MAX_FRAME_BYTES 4100u

/* Shrinks the shared heaps of a decoded config to what op_bytes more input bytes can use, never
 * growing one. ks_decode_config gives heap 0 a fixed 8 MiB whatever the input; an allocator
 * that manages the region (buddy, tlsf) then builds, walks at every self-check and tears down
 * control data for all of it on every input (measured: buddy's self-check walk of the 8 MiB map
 * was 60% of fuzz_alloc_buddy's time). The bound keeps every allocation outcome: at most
 * op_bytes ALLOCATE ops can follow (each op takes at least one byte), a MUST_ALLOCATE pin may
 * set aside its Frames at InitializeAllocator (0 counts as KS_DECODE_FIT_DEFAULT_FRAMES, and a
 * FrameSize of 0 as KS_FUZZ_MAX_FRAME_BYTES), and each of them gets a slot of twice the largest
 * pin's FrameSize + alignment + 64 rounded up to a power of two, plus 64 KiB of control slack; a
 * heap that size cannot run out where the 8 MiB one would not (in buddy each live frame spoils at
 * most one block of any order; in TLSF some free gap stays at least twice the largest request),
 * and an input that could exhaust 8 MiB keeps 8 MiB. Checked by running 9,664 buddy and 13,480
 * tlsf fuzz inputs on both heap sizes: no allocation outcome differed. Call it right after
 * ks_decode_config with the bytes left. */
#define KS_DECODE_FIT_DEFAULT_FRAMES 1024u
void ks_decode_fit_heaps(ks_workload_config *config, size_t op_bytes);

/* Decodes one op valid for view; false once the input is used up. DMA ops only when view->dma;
 * without a device the byte-to-op mapping is the one it always was, so old corpora decode alike.
 * ks_decode_config reads one more byte, choosing the device's options, only when some entry has
 * KS_CAP_DMA, for the same reason. */
bool ks_decode_op(ks_byte_reader *reader, const ks_live_view *view, ks_op *op);

/* ---- The engine ---------------------------------------------------------------------------- */

typedef struct ks_engine ks_engine;

typedef struct ks_engine_options {
    struct ks_verifier *verifier;  /* run every pin through this verifier session, or NULL */
    struct ks_trace_writer *trace; /* record every op, or NULL */
    bool keep_live_at_close;       /* false (default): free every live frame before DeleteAllocator */
    /* KS_DMA_TRANSFER_* flags for DMA ops on a DMA allocator's frames; KS_DMA_TRANSFER_NO_SYNC
     * plants a driver that forgets its syncs (stale data on a non-coherent device). Frames the
     * engine maps itself always sync: their map and unmap do it. 0 = a correct driver. */
    unsigned dma_transfer_flags;
    /* Marks every call into an allocator and every access to its frames in slot 0 of this watch
     * (watch.h), for a supervisor in another process; NULL: none. */
    struct ks_watch *watch;
} ks_engine_options;

typedef struct ks_run_stats {
    uint64_t ops;
    uint64_t allocations;
    uint64_t allocation_failures; /* Allocate returned NULL */
    uint64_t frees;
    uint64_t touches;
    uint64_t peak_live;
    uint64_t elapsed_ns;
    uint64_t dma_ops;             /* DMA_* ops executed */
    uint64_t dma_bytes;           /* bytes the device moved for them */
    uint64_t dma_injected_faults; /* transfers an injected fault stopped (not a step failure) */
} ks_run_stats;

/* Creates the heaps, then InitializeAllocator for every pin (through the verifier when given).
 * Each pin's config.pins[i].entry must be set. */
NTSTATUS ks_engine_open(const ks_workload_config *config, const ks_engine_options *options, ks_engine **engine,
                        ks_error *err);
/* Executes one op. An op that does not fit the state (pin out of range, k >= live, unknown kind,
 * a DMA op without a device) is STATUS_INVALID_PARAMETER and changes nothing. Verifier faults do
 * not fail the step: read them from the verifier. allocated (may be NULL) says whether an
 * ALLOCATE got a frame.
 * DMA: a data mismatch is STATUS_DATA_ERROR, a device fault that was not injected is
 * STATUS_UNSUCCESSFUL, and a new DMA-debug report during any op (the allocator's own map and
 * free calls included) is STATUS_DATA_ERROR; err names the op, pin, k, CPU and bus address (or
 * the report). A fault the device injected by design (fault_ppm) is counted in
 * dma_injected_faults and is not a failure. Under a verifier the engine restores the frame's
 * bytes after a DMA op, so the verifier's data check keeps guarding the allocator. */
NTSTATUS ks_engine_step(ks_engine *engine, const ks_op *op, bool *allocated, ks_error *err);
void ks_engine_view(const ks_engine *engine, ks_live_view *view);
/* The k-th live frame of pin, or NULL. */
void *ks_engine_frame(const ks_engine *engine, unsigned pin, uint32_t k);
/* The framing pin's allocator settled on. */
const KSALLOCATOR_FRAMING *ks_engine_framing(const ks_engine *engine, unsigned pin);
const ks_run_stats *ks_engine_stats(const ks_engine *engine);
/* The workload's DMA device, or NULL (for counters and reports; owned by the engine). */
struct ks_dma_device *ks_engine_dma_device(const ks_engine *engine);
/* Frees what is live (unless keep_live_at_close), deletes every instance, destroys the heaps,
 * then stops and destroys the DMA device. A DMA-debug report made during teardown (a leaked
 * mapping or common buffer, a bad free) is STATUS_DATA_ERROR naming the first one: everything is
 * still released. */
NTSTATUS ks_engine_close(ks_engine *engine, ks_error *err);

/* Runs op_count ops of a profile; stops early only on an engine error, or on the first verifier
 * fault when stop_at_fault. */
NTSTATUS ks_engine_run_profile(ks_engine *engine, ks_profile profile, uint64_t seed, uint64_t op_count,
                               bool stop_at_fault, ks_error *err);

#endif
