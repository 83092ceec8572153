/*
 * verifier.c -- the checking layer of verifier.h: a KSALLOCATOR_DISPATCH that wraps an inner
 * allocator's table and holds it to the contract of ksalloc.h.
 *
 * Design. A session owns one shadow map (shadow.h) of every live frame of every instance opened
 * through it, so a frame handed out by one instance and overlapping one of another is caught
 * whichever allocator families are involved. Each op takes an index from the session's atomic op
 * counter when it starts; a fault names that index. The inner allocator is always called with no
 * lock held; the shadow map is read and updated under the session mutex; the frame patterns are
 * written and checked outside it, so the lock is held O(log live) per op whatever FrameSize is.
 *
 * Patterns. Each tracked frame is filled on Allocate with a stream of words whose seed mixes
 * (splitmix64) the session salt, the frame's serial (the op index of its Allocate, unique in the
 * session) and its generation (bumped by each ks_verifier_touch). Word k is seed + (k + 1) times
 * an odd constant, so a copy shifted by whole words is caught as well as a stray byte; the tail of an odd-sized frame is
 * written and checked byte by byte, and unaligned frames go through memcpy. A check reports the
 * first differing offset with the expected and found bytes, how many bytes differ and the last.
 *
 * Faults and cascades. A frame that overlaps a live one (double handout, short frame, overlap)
 * is reported and not tracked: it gets no pattern (writing one would corrupt the live frame it
 * overlaps and blame the allocator twice), and it is remembered in a per-instance record of the
 * last VERIFIER_FAULTED_FRAMES such frames, so that the user's Free or Touch of it is accepted
 * silently. That Free is not passed down: the memory belongs, at least in part, to a frame the
 * verifier still tracks, and the inner DeleteAllocator releases whatever the instance holds. A
 * misaligned or over-capacity frame is tracked normally. A Free the verifier refuses (BAD_FREE)
 * is not passed down either: Driver Verifier stops there too, and passing it on would corrupt
 * the allocator and turn one fault into many.
 *
 * Internal failure. If the shadow node pool cannot grow (malloc failed), Allocate hands the frame
 * back to the inner allocator and returns NULL: callers must handle NULL anyway, and a frame the
 * verifier cannot track would make every later check on it wrong. It is not a fault of the
 * allocator; the session counts it and keeps the first message (internal_failures below).
 *
 * Cost: O(log live) under the lock per op plus O(FrameSize) outside it to write or check the
 * pattern; per live frame one 80-byte shadow node; per instance about 2 KiB of records, which
 * a deleted instance leaves to the session for the next one. ks_verifier_reset empties a session
 * for reuse, keeping that memory: a fuzz target runs each input in the same session.
 * Thread safety: any op from any thread, as far as the inner allocator allows (the verifier adds
 * no ordering of its own between calls of one instance). A thread-safe allocator's self_check is
 * called concurrently with its other callbacks and must lock what it reads.
 */
#include "verifier.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sanitizers.h"
#include "shadow.h"

#define VERIFIER_DEFAULT_FAULTS_KEPT 64u
/* Untracked frames remembered per instance; a Free of an older one becomes a BAD_FREE. */
#define VERIFIER_FAULTED_FRAMES 64u
/* Recent frees remembered per instance, to call a bad Free a double free. */
#define VERIFIER_RECENT_FREES 64u
/* Addresses a LEAK fault lists. */
#define VERIFIER_LEAKS_LISTED 4u
/* Faults one op can find: misaligned + over-capacity + one overlap kind + self-check. */
#define VERIFIER_OP_FAULTS_MAX 4u

_Static_assert(VERIFIER_FAULTED_FRAMES > 0 && VERIFIER_RECENT_FREES > 0, "records need a slot");

typedef struct recent_free {
    uintptr_t address;
    uint64_t op_index;
} recent_free;

typedef struct verifier_instance {
    ks_verifier *session;
    const ks_allocator_entry *entry;
    void *inner_context;
    KSALLOCATOR_FRAMING framing; /* as the inner allocator settled it */
    size_t shadow_bytes;         /* FrameSize, or 1 when FrameSize is 0 */
    bool capacity_promised;      /* MUST_ALLOCATE or KS_CAP_GUARANTEED, with Frames != 0 */
    bool bounded;                /* KS_CAP_BOUNDED with Frames != 0 */
    _Atomic uint64_t ops;        /* this instance's Allocate, Free and Touch calls */
    /* Calls between the inner allocator and the shadow map: an Allocate that may hold a frame the
     * map does not show yet, a Free whose frame left the map but not yet the allocator. With
     * several threads, a NULL is only a broken promise if the promise still fails counting these
     * (single-threaded both are 0 and the check is exact). */
    _Atomic uint64_t allocates_in_flight;
    _Atomic uint64_t frees_in_flight;
    _Atomic uint64_t frees_completed; /* a Free that completed during a NULL Allocate excuses it */
    /* ksalloc.h lets self_check assume the instance is quiescent. On a thread-safe allocator
     * with a self_check, inner Allocate/Free calls hold this for reading and a self_check holds it
     * for writing, so a periodic or on-request check never runs beside another thread's call. */
    bool check_needs_quiesce;
    pthread_rwlock_t check_lock;
    /* Under the session lock from here on. */
    ks_shadow_owner owner;
    uintptr_t faulted_frames[VERIFIER_FAULTED_FRAMES]; /* oldest first */
    unsigned faulted_count;
    recent_free recent_frees[VERIFIER_RECENT_FREES]; /* ring */
    uint64_t frees_recorded;
    struct verifier_instance *next_spare; /* on the session's spare list once deleted */
} verifier_instance;

struct ks_verifier {
    pthread_mutex_t lock;
    ks_shadow *shadow;
    ks_verifier_options options; /* max_faults_kept resolved */
    uint64_t salt;
    _Atomic uint64_t op_count;
    _Atomic uint64_t fault_count;
    _Atomic uint64_t faults_kept; /* slots of faults[] written; published with release */
    _Atomic unsigned next_instance;
    ks_fault *faults;
    int zero_fd; /* /dev/zero, for options.probe_frames; -1 when not probing */
    /* Under the lock: pages already probed writable (page number + 1; 0 = empty), open addressing.
     * A frame on known pages is not probed again: a pool recycling its frames costs one system
     * call per page ever handed out, not one per Allocate (which made a verified run 3.8x
     * slower). Emptied when full. A page unmapped after its probe is not seen here; the CLI's
     * supervisor still reports the crash it causes (harness/cli/isolate.c). */
    uintptr_t *probed_pages;
    size_t probed_count;
    /* Under the lock. The node pool's failures to grow: not faults of any allocator, so they are
     * not in faults[]; verifier.h has no accessor for them yet (see the top of the file). */
    uint64_t internal_failures;
    ks_error internal_error;
    /* Under the lock. Records of deleted instances, reused by the next InitializeAllocator (as
     * the shadow keeps its nodes), and how many instances are open. */
    verifier_instance *spare_instances;
    unsigned instances_open;
};

/* Up to VERIFIER_OP_FAULTS_MAX faults found by one op, published when it ends. */
typedef struct fault_batch {
    unsigned count;
    ks_fault faults[VERIFIER_OP_FAULTS_MAX];
} fault_batch;

static _Atomic uint64_t sessions_created;

/* ---- names ---------------------------------------------------------------------------------- */

const char *ks_fault_kind_name(ks_fault_kind kind)
{
    static const char *const names[KS_FAULT_KIND_COUNT] = {
        [KS_FAULT_NONE] = "none",
        [KS_FAULT_INIT_FAILED] = "init-failed",
        [KS_FAULT_NULL_PROMISED] = "null-promised",
        [KS_FAULT_OVER_CAPACITY] = "over-capacity",
        [KS_FAULT_MISALIGNED] = "misaligned",
        [KS_FAULT_DOUBLE_HANDOUT] = "double-handout",
        [KS_FAULT_SHORT_FRAME] = "short-frame",
        [KS_FAULT_OVERLAP] = "overlap",
        [KS_FAULT_CORRUPTION] = "corruption",
        [KS_FAULT_BAD_FREE] = "bad-free",
        [KS_FAULT_LEAK] = "leak",
        [KS_FAULT_SELF_CHECK] = "self-check",
        [KS_FAULT_UNWRITABLE_FRAME] = "unwritable-frame",
    };
    if ((unsigned)kind >= KS_FAULT_KIND_COUNT)
        return "unknown";
    return names[kind];
}

static const char *entry_name(const ks_allocator_entry *entry)
{
    return entry->name != NULL ? entry->name : "?";
}

/* ---- faults --------------------------------------------------------------------------------- */

static void batch_add(fault_batch *batch, const verifier_instance *inst, ks_fault_kind kind, uint64_t op_index,
                      uintptr_t address, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static void batch_add(fault_batch *batch, const verifier_instance *inst, ks_fault_kind kind, uint64_t op_index,
                      uintptr_t address, const char *fmt, ...)
{
    if (batch->count == VERIFIER_OP_FAULTS_MAX)
        return; /* unreachable: no op finds more (see VERIFIER_OP_FAULTS_MAX) */
    ks_fault *fault = &batch->faults[batch->count++];
    fault->kind = kind;
    fault->allocator = entry_name(inst->entry);
    fault->instance = inst->owner.number;
    fault->op_index = op_index;
    fault->address = address;
    int used = snprintf(fault->message, sizeof fault->message,
                        "%s: allocator '%s' instance %u op %" PRIu64 " frame 0x%" PRIxPTR ": ", ks_fault_kind_name(kind),
                        fault->allocator, fault->instance, op_index, address);
    if (used < 0 || (size_t)used >= sizeof fault->message)
        return;
    va_list args;
    va_start(args, fmt);
    vsnprintf(fault->message + used, sizeof fault->message - (size_t)used, fmt, args);
    va_end(args);
}

/* Stores the batch in the session, then runs the callback for each fault with no lock held. */
static void batch_publish(ks_verifier *verifier, const fault_batch *batch)
{
    if (batch->count == 0)
        return;
    pthread_mutex_lock(&verifier->lock);
    for (unsigned i = 0; i < batch->count; i++) {
        uint64_t kept = atomic_load_explicit(&verifier->faults_kept, memory_order_relaxed);
        if (kept < verifier->options.max_faults_kept) {
            verifier->faults[kept] = batch->faults[i];
            atomic_store_explicit(&verifier->faults_kept, kept + 1, memory_order_release);
        }
        atomic_fetch_add(&verifier->fault_count, 1);
    }
    pthread_mutex_unlock(&verifier->lock);
    if (verifier->options.on_fault != NULL)
        for (unsigned i = 0; i < batch->count; i++)
            verifier->options.on_fault(verifier->options.on_fault_arg, &batch->faults[i]);
}

/* ---- patterns ------------------------------------------------------------------------------- */

#define PATTERN_GAMMA 0x9E3779B97F4A7C15ull

/* Word k of a pattern is seed + (k + 1) * PATTERN_GAMMA: the seed (per frame, serial and
 * generation, mixed) tells frames apart, the odd step tells the words of one frame apart, so a
 * copy shifted by j words differs in every word (by j * PATTERN_GAMMA, never 0 mod 2^64). It is
 * one add per word, which the compiler vectorises, where mixing every word cost ten times more
 * and bought no detection: a check compares for equality, it does not need random-looking words.
 *
 * The two O(FrameSize) loops carry no instrumentation at all in sanitizer and fuzz builds, and
 * they were most of a fuzz target's time before (perf, fuzz_alloc_pool: 23% of samples in the
 * two loops, each 8-byte access checked by ASan; earlier, per-word comparison callbacks for the
 * fuzzer, which told it nothing since every word of a good frame takes the same branch). What
 * ASan's per-access checks found is kept by one range check per frame: if any byte of the frame
 * is poisoned (a frame running into a heap redzone or freed memory), the access is redone
 * through an instrumented path, so ASan reports it as it did. noinline keeps the loops from
 * being inlined into (and instrumented with) their callers. */
#if KS_ASAN
#include <sanitizer/asan_interface.h>
#endif
#if defined(__clang__)
#define PATTERN_LOOP __attribute__((no_sanitize("coverage", "address"), noinline))
#elif defined(__GNUC__)
#define PATTERN_LOOP __attribute__((no_sanitize_address, noinline))
#else
#define PATTERN_LOOP
#endif

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t pattern_seed(const ks_verifier *verifier, uint64_t serial, uint64_t generation)
{
    return mix64(mix64(verifier->salt ^ serial) + (generation + 1) * PATTERN_GAMMA);
}

static uint64_t pattern_word(uint64_t seed, size_t word_index)
{
    return seed + ((uint64_t)word_index + 1) * PATTERN_GAMMA;
}

/* Under ASan: redoes, instrumented, an access to the first poisoned byte of [frame, +bytes) if
 * there is one, so that ASan reports it (and stops the run) as the loops' own checks used to. */
static void pattern_touch_poisoned(const void *frame, size_t frame_bytes, bool write)
{
#if KS_ASAN
    void *poisoned = __asan_region_is_poisoned((void *)(uintptr_t)frame, frame_bytes);
    if (poisoned == NULL)
        return;
    if (write)
        *(volatile unsigned char *)poisoned = 0;
    else
        (void)*(volatile const unsigned char *)poisoned;
#else
    (void)frame;
    (void)frame_bytes;
    (void)write;
#endif
}

PATTERN_LOOP static void pattern_fill_loop(unsigned char *bytes, size_t frame_bytes, uint64_t seed)
{
    size_t words = frame_bytes / 8;
    uint64_t word = pattern_word(seed, 0);
    for (size_t k = 0; k < words; k++) {
        memcpy(bytes + 8 * k, &word, 8);
        word += PATTERN_GAMMA;
    }
    if (frame_bytes % 8 != 0)
        memcpy(bytes + 8 * words, &word, frame_bytes % 8);
}

static void pattern_fill(void *frame, size_t frame_bytes, uint64_t seed)
{
    pattern_touch_poisoned(frame, frame_bytes, true);
    pattern_fill_loop(frame, frame_bytes, seed);
}

typedef struct pattern_mismatch {
    size_t differing_bytes;
    size_t first_offset;
    size_t last_offset;
    unsigned char expected;
    unsigned char found;
} pattern_mismatch;

static void mismatch_note(pattern_mismatch *mismatch, size_t offset, unsigned char expected, unsigned char found)
{
    if (mismatch->differing_bytes++ == 0) {
        mismatch->first_offset = offset;
        mismatch->expected = expected;
        mismatch->found = found;
    }
    mismatch->last_offset = offset;
}

/* The whole words of the frame, OR of (found ^ expected): 0 when they all hold their pattern. */
PATTERN_LOOP static uint64_t pattern_words_differ(const unsigned char *bytes, size_t words, uint64_t seed)
{
    uint64_t expected = pattern_word(seed, 0), differ = 0;
    for (size_t k = 0; k < words; k++) {
        uint64_t found;
        memcpy(&found, bytes + 8 * k, 8);
        differ |= found ^ expected;
        expected += PATTERN_GAMMA;
    }
    return differ;
}

/* True when the frame holds its pattern; otherwise fills mismatch, byte by byte (the slow pass
 * runs only when the fast one found a difference). */
PATTERN_LOOP static bool pattern_check_loop(const unsigned char *bytes, size_t frame_bytes, uint64_t seed,
                                            pattern_mismatch *mismatch)
{
    memset(mismatch, 0, sizeof *mismatch);
    size_t words = frame_bytes / 8;
    if (pattern_words_differ(bytes, words, seed) == 0) {
        if (frame_bytes % 8 == 0)
            return true;
        uint64_t tail_word = pattern_word(seed, words);
        unsigned char tail[8];
        memcpy(tail, &tail_word, 8);
        if (memcmp(bytes + 8 * words, tail, frame_bytes % 8) == 0)
            return true;
    }
    for (size_t offset = 0; offset < frame_bytes; offset += 8) {
        size_t chunk_bytes = frame_bytes - offset < 8 ? frame_bytes - offset : 8;
        uint64_t expected_word = pattern_word(seed, offset / 8);
        unsigned char expected[8];
        memcpy(expected, &expected_word, 8);
        for (size_t j = 0; j < chunk_bytes; j++)
            if (bytes[offset + j] != expected[j])
                mismatch_note(mismatch, offset + j, expected[j], bytes[offset + j]);
    }
    return mismatch->differing_bytes == 0;
}

static bool pattern_check(const void *frame, size_t frame_bytes, uint64_t seed, pattern_mismatch *mismatch)
{
    pattern_touch_poisoned(frame, frame_bytes, false);
    return pattern_check_loop(frame, frame_bytes, seed, mismatch);
}

/* What a tracked frame looked like when its op took it out of (or bumped it in) the map. */
typedef struct frame_snapshot {
    uintptr_t address;
    uint64_t serial;
    uint64_t generation;
} frame_snapshot;

static void check_frame_pattern(const verifier_instance *inst, const frame_snapshot *snap, uint64_t op_index,
                                const char *when, fault_batch *batch)
{
    size_t frame_bytes = inst->framing.FrameSize;
    pattern_mismatch mismatch;
    if (pattern_check((const void *)snap->address, frame_bytes, pattern_seed(inst->session, snap->serial,
                                                                             snap->generation), &mismatch))
        return;
    batch_add(batch, inst, KS_FAULT_CORRUPTION, op_index, snap->address,
              "frame data changed behind the user's back (found at %s): first difference at offset %zu of %zu: "
              "expected 0x%02x, found 0x%02x; %zu byte(s) differ, the last at offset %zu; frame handed out at "
              "op %" PRIu64 ", pattern generation %" PRIu64,
              when, mismatch.first_offset, frame_bytes, mismatch.expected, mismatch.found, mismatch.differing_bytes,
              mismatch.last_offset, snap->serial, snap->generation);
}

/* ---- per-instance records (session lock held) ----------------------------------------------- */

static void faulted_remember(verifier_instance *inst, uintptr_t address)
{
    if (inst->faulted_count == VERIFIER_FAULTED_FRAMES) {
        memmove(inst->faulted_frames, inst->faulted_frames + 1,
                (VERIFIER_FAULTED_FRAMES - 1) * sizeof inst->faulted_frames[0]);
        inst->faulted_count--;
    }
    inst->faulted_frames[inst->faulted_count++] = address;
}

static int faulted_find(const verifier_instance *inst, uintptr_t address)
{
    for (unsigned i = inst->faulted_count; i-- > 0;)
        if (inst->faulted_frames[i] == address)
            return (int)i;
    return -1;
}

static bool faulted_forget(verifier_instance *inst, uintptr_t address)
{
    int slot = faulted_find(inst, address);
    if (slot < 0)
        return false;
    memmove(inst->faulted_frames + slot, inst->faulted_frames + slot + 1,
            (inst->faulted_count - (unsigned)slot - 1) * sizeof inst->faulted_frames[0]);
    inst->faulted_count--;
    return true;
}

static void recent_free_remember(verifier_instance *inst, uintptr_t address, uint64_t op_index)
{
    recent_free *slot = &inst->recent_frees[inst->frees_recorded++ % VERIFIER_RECENT_FREES];
    slot->address = address;
    slot->op_index = op_index;
}

static const recent_free *recent_free_find(const verifier_instance *inst, uintptr_t address)
{
    uint64_t remembered = inst->frees_recorded < VERIFIER_RECENT_FREES ? inst->frees_recorded : VERIFIER_RECENT_FREES;
    for (uint64_t age = 1; age <= remembered; age++) {
        const recent_free *slot = &inst->recent_frees[(inst->frees_recorded - age) % VERIFIER_RECENT_FREES];
        if (slot->address == address)
            return slot;
    }
    return NULL;
}

static const verifier_instance *node_instance(const ks_shadow_node *node)
{
    return node->owner->context;
}

/* A Free or Touch of a frame not live in inst: says what the address is instead. */
static void describe_not_live(const verifier_instance *inst, uintptr_t address, uint64_t op_index, const char *what,
                              fault_batch *batch)
{
    const ks_shadow *shadow = inst->session->shadow;
    const ks_shadow_node *node = address != 0 ? ks_shadow_containing(shadow, address) : NULL;
    const recent_free *freed = recent_free_find(inst, address);
    if (address == 0) {
        batch_add(batch, inst, KS_FAULT_BAD_FREE, op_index, address, "%s: NULL", what);
    } else if (node != NULL && node->start == address) {
        batch_add(batch, inst, KS_FAULT_BAD_FREE, op_index, address,
                  "%s: it is live in instance %u (allocator '%s', handed out at op %" PRIu64 "), not in this one",
                  what, node->owner->number, entry_name(node_instance(node)->entry), node->serial);
    } else if (node != NULL) {
        batch_add(batch, inst, KS_FAULT_BAD_FREE, op_index, address,
                  "%s: it points %zu bytes into live frame 0x%" PRIxPTR " of instance %u (handed out at op %" PRIu64
                  ")",
                  what, (size_t)(address - node->start), node->start, node->owner->number, node->serial);
    } else if (freed != NULL) {
        batch_add(batch, inst, KS_FAULT_BAD_FREE, op_index, address,
                  "%s: it was already freed at op %" PRIu64 " (double free)", what, freed->op_index);
    } else {
        batch_add(batch, inst, KS_FAULT_BAD_FREE, op_index, address,
                  "%s: no longer live or never handed out by this instance (not among its last %u frees)", what,
                  VERIFIER_RECENT_FREES);
    }
}

/* ---- InitializeAllocator -------------------------------------------------------------------- */

typedef struct reason_list {
    char text[300];
    size_t used;
} reason_list;

static void reason_add(reason_list *reasons, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void reason_add(reason_list *reasons, const char *fmt, ...)
{
    if (reasons->used + 3 >= sizeof reasons->text)
        return;
    if (reasons->used > 0) {
        memcpy(reasons->text + reasons->used, "; ", 3);
        reasons->used += 2;
    }
    va_list args;
    va_start(args, fmt);
    int written = vsnprintf(reasons->text + reasons->used, sizeof reasons->text - reasons->used, fmt, args);
    va_end(args);
    if (written > 0)
        reasons->used += (size_t)written < sizeof reasons->text - reasons->used ? (size_t)written
                                                                                 : sizeof reasons->text - reasons->used - 1;
}

static bool promises_capacity(const ks_allocator_entry *entry, const KSALLOCATOR_FRAMING *requested)
{
    return (requested->RequirementsFlags & KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE) != 0 ||
           (entry->caps & KS_CAP_GUARANTEED) != 0;
}

/* The write-back may only strengthen the request. */
static void check_settled_framing(const verifier_instance *inst, const KSALLOCATOR_FRAMING *requested,
                                  uint64_t op_index, fault_batch *batch)
{
    const KSALLOCATOR_FRAMING *settled = &inst->framing;
    reason_list reasons = {.used = 0};
    if (inst->inner_context == NULL)
        reason_add(&reasons, "returned STATUS_SUCCESS with *Context left NULL");
    if (!ks_framing_align_valid(settled))
        reason_add(&reasons, "wrote back FileAlignment 0x%x, which is not 2^k - 1", settled->FileAlignment);
    if (requested->FrameSize != 0 && settled->FrameSize < requested->FrameSize)
        reason_add(&reasons, "wrote back FrameSize %u, below the %u requested", settled->FrameSize,
                   requested->FrameSize);
    if (settled->FileAlignment < requested->FileAlignment)
        reason_add(&reasons, "wrote back FileAlignment 0x%x, weaker than the 0x%x requested", settled->FileAlignment,
                   requested->FileAlignment);
    if (promises_capacity(inst->entry, requested) && requested->Frames != 0 && settled->Frames < requested->Frames)
        reason_add(&reasons, "wrote back Frames %u, below the %u requested with capacity promised (%s)",
                   settled->Frames, requested->Frames,
                   (requested->RequirementsFlags & KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE) ? "MUST_ALLOCATE"
                                                                                          : "KS_CAP_GUARANTEED");
    if ((requested->RequirementsFlags & KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE) &&
        !(settled->RequirementsFlags & KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE))
        reason_add(&reasons, "cleared KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE");
    if (reasons.used > 0)
        batch_add(batch, inst, KS_FAULT_INIT_FAILED, op_index, 0, "InitializeAllocator %s", reasons.text);
}

static void instance_setup(verifier_instance *inst, const ks_verifier_pin *vpin, const KSALLOCATOR_FRAMING *requested,
                           const KSALLOCATOR_FRAMING *settled, void *inner_context)
{
    ks_verifier *verifier = vpin->verifier;
    inst->session = verifier;
    inst->entry = vpin->inner;
    inst->inner_context = inner_context;
    inst->framing = *settled;
    inst->shadow_bytes = settled->FrameSize != 0 ? settled->FrameSize : 1;
    inst->capacity_promised = promises_capacity(vpin->inner, requested) && settled->Frames != 0;
    inst->bounded = (vpin->inner->caps & KS_CAP_BOUNDED) != 0 && settled->Frames != 0;
    atomic_init(&inst->ops, 0);
    inst->check_needs_quiesce = vpin->inner->self_check != NULL && (vpin->inner->caps & KS_CAP_THREAD_SAFE) != 0;
    pthread_rwlock_init(&inst->check_lock, NULL);
    ks_shadow_owner_init(&inst->owner, atomic_fetch_add(&verifier->next_instance, 1), inst);
}

/* A zeroed instance record, from the session's spares if it has one, counted as open. */
static verifier_instance *instance_record_take(ks_verifier *verifier)
{
    pthread_mutex_lock(&verifier->lock);
    verifier_instance *inst = verifier->spare_instances;
    if (inst != NULL) {
        verifier->spare_instances = inst->next_spare;
        verifier->instances_open++;
    }
    pthread_mutex_unlock(&verifier->lock);
    if (inst != NULL) {
        memset(inst, 0, sizeof *inst);
        return inst;
    }
    inst = calloc(1, sizeof *inst);
    if (inst != NULL) {
        pthread_mutex_lock(&verifier->lock);
        verifier->instances_open++;
        pthread_mutex_unlock(&verifier->lock);
    }
    return inst;
}

static void instance_record_give(ks_verifier *verifier, verifier_instance *inst)
{
    pthread_mutex_lock(&verifier->lock);
    inst->next_spare = verifier->spare_instances;
    verifier->spare_instances = inst;
    verifier->instances_open--;
    pthread_mutex_unlock(&verifier->lock);
}

static NTSTATUS verifier_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    const ks_verifier_pin *vpin = initial_context;
    if (vpin == NULL || vpin->verifier == NULL || vpin->inner == NULL || vpin->inner->dispatch == NULL ||
        framing == NULL || context == NULL)
        return STATUS_INVALID_PARAMETER;
    verifier_instance *inst = instance_record_take(vpin->verifier);
    if (inst == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    KSALLOCATOR_FRAMING requested = *framing, settled = *framing;
    void *inner_context = NULL;
    NTSTATUS status = vpin->inner->dispatch->InitializeAllocator(vpin->pin, &settled, &inner_context);
    if (!NT_SUCCESS(status)) {
        instance_record_give(vpin->verifier, inst);
        return status; /* refusing a framing is the allocator's right: passed through, no fault */
    }
    instance_setup(inst, vpin, &requested, &settled, inner_context);
    fault_batch batch;
    batch.count = 0;
    check_settled_framing(inst, &requested, atomic_load(&vpin->verifier->op_count), &batch);
    batch_publish(vpin->verifier, &batch);
    if (inner_context == NULL) {
        /* Reported above; no call may reach the allocator with a NULL context, so the pin stops
         * here (nor can DeleteAllocator be called: there is nothing to delete). */
        instance_record_give(vpin->verifier, inst);
        return STATUS_INVALID_HANDLE;
    }
    *framing = settled;
    *context = inst;
    return STATUS_SUCCESS;
}

/* ---- self-check ----------------------------------------------------------------------------- */

static void run_self_check(const verifier_instance *inst, uint64_t op_index, const char *when, fault_batch *batch)
{
    if (inst->entry->self_check == NULL)
        return;
    char why[256] = "";
    if (inst->check_needs_quiesce)
        pthread_rwlock_wrlock((pthread_rwlock_t *)&inst->check_lock);
    NTSTATUS status = inst->entry->self_check(inst->inner_context, why, sizeof why);
    if (inst->check_needs_quiesce)
        pthread_rwlock_unlock((pthread_rwlock_t *)&inst->check_lock);
    why[sizeof why - 1] = '\0';
    if (!NT_SUCCESS(status))
        batch_add(batch, inst, KS_FAULT_SELF_CHECK, op_index, 0, "self_check %s returned %s: %s", when,
                  ks_status_name(status), why[0] != '\0' ? why : "(no reason given)");
}

/* Ends every op of an instance: the periodic self-check, then the faults go out. */
static void finish_op(verifier_instance *inst, uint64_t op_index, fault_batch *batch)
{
    uint32_t every_ops = inst->session->options.self_check_every_ops;
    uint64_t ops_done = atomic_fetch_add(&inst->ops, 1) + 1;
    if (every_ops != 0 && ops_done % every_ops == 0)
        run_self_check(inst, op_index, "(periodic)", batch);
    batch_publish(inst->session, batch);
}

/* ---- Allocate ------------------------------------------------------------------------------- */

static void check_null_locked(const verifier_instance *inst, uint64_t frees_before, uint64_t op_index,
                              fault_batch *batch)
{
    if (!inst->capacity_promised)
        return;
    /* A Free ends with frees_completed++ then frees_in_flight-- (outside the lock), so frees_in_flight
     * is read first: if it already shows such a Free gone, frees_completed shows it done. Read the
     * other way round, a Free finishing between the two reads is seen by neither. */
    uint64_t frees_in_flight = atomic_load(&inst->frees_in_flight);
    if (atomic_load(&inst->frees_completed) != frees_before)
        return;
    uint64_t others_in_flight = atomic_load(&inst->allocates_in_flight) - 1 + frees_in_flight;
    if (inst->owner.live + others_in_flight >= inst->framing.Frames)
        return;
    batch_add(batch, inst, KS_FAULT_NULL_PROMISED, op_index, 0,
              "Allocate returned NULL with %" PRIu64 " of %u frames live and capacity promised (%s)", inst->owner.live,
              inst->framing.Frames,
              (inst->framing.RequirementsFlags & KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE) ? "MUST_ALLOCATE"
                                                                                        : "KS_CAP_GUARANTEED");
}

static void report_clash_locked(const verifier_instance *inst, uintptr_t address, const ks_shadow_node *clash,
                                uint64_t op_index, fault_batch *batch)
{
    uintptr_t end = address + inst->shadow_bytes < address ? UINTPTR_MAX : address + inst->shadow_bytes;
    uintptr_t clash_end = clash->start + clash->length_bytes;
    size_t shared_bytes = (size_t)((end < clash_end ? end : clash_end) - (address > clash->start ? address : clash->start));
    const char *clash_allocator = entry_name(node_instance(clash)->entry);
    if (clash->start == address)
        batch_add(batch, inst, KS_FAULT_DOUBLE_HANDOUT, op_index, address,
                  "handed out again while live in instance %u (allocator '%s') since op %" PRIu64,
                  clash->owner->number, clash_allocator, clash->serial);
    else if (clash->owner == &inst->owner)
        batch_add(batch, inst, KS_FAULT_SHORT_FRAME, op_index, address,
                  "[0x%" PRIxPTR ", +%zu) shares %zu bytes with live frame 0x%" PRIxPTR " (+%zu, op %" PRIu64
                  ") of the same instance: its frames are shorter than FrameSize %u",
                  address, inst->shadow_bytes, shared_bytes, clash->start, clash->length_bytes, clash->serial,
                  inst->framing.FrameSize);
    else
        batch_add(batch, inst, KS_FAULT_OVERLAP, op_index, address,
                  "[0x%" PRIxPTR ", +%zu) shares %zu bytes with live frame 0x%" PRIxPTR " (+%zu) of instance %u "
                  "(allocator '%s', op %" PRIu64 ")",
                  address, inst->shadow_bytes, shared_bytes, clash->start, clash->length_bytes, clash->owner->number,
                  clash_allocator, clash->serial);
}

typedef enum admit_verdict { ADMIT_TRACKED, ADMIT_UNTRACKED, ADMIT_NO_MEMORY } admit_verdict;

static admit_verdict admit_frame_locked(verifier_instance *inst, uintptr_t address, uint64_t op_index,
                                        fault_batch *batch)
{
    size_t align_bytes = ks_framing_align_bytes(&inst->framing);
    if ((address & inst->framing.FileAlignment) != 0)
        batch_add(batch, inst, KS_FAULT_MISALIGNED, op_index, address,
                  "not aligned to %zu bytes (FileAlignment 0x%x): address mod %zu = %zu", align_bytes,
                  inst->framing.FileAlignment, align_bytes, (size_t)(address & inst->framing.FileAlignment));
    if (inst->bounded && inst->owner.live >= inst->framing.Frames)
        batch_add(batch, inst, KS_FAULT_OVER_CAPACITY, op_index, address,
                  "frame %" PRIu64 " handed out with %" PRIu64 " live on a KS_CAP_BOUNDED allocator with Frames %u",
                  inst->owner.live + 1, inst->owner.live, inst->framing.Frames);
    ks_shadow_node *node = NULL;
    NTSTATUS status = ks_shadow_insert(inst->session->shadow, &inst->owner, address, inst->shadow_bytes, op_index, &node);
    if (status == STATUS_INSUFFICIENT_RESOURCES)
        return ADMIT_NO_MEMORY;
    if (!NT_SUCCESS(status)) {
        report_clash_locked(inst, address, node, op_index, batch);
        faulted_remember(inst, address);
        return ADMIT_UNTRACKED;
    }
    return ADMIT_TRACKED;
}

static void note_internal_failure(verifier_instance *inst, uintptr_t address, uint64_t op_index)
{
    ks_verifier *verifier = inst->session;
    pthread_mutex_lock(&verifier->lock);
    if (verifier->internal_failures++ == 0)
        ks_error_set(&verifier->internal_error, STATUS_INSUFFICIENT_RESOURCES,
                     "verifier: the shadow node pool could not grow at op %" PRIu64 " (allocator '%s' instance %u): "
                     "frame 0x%" PRIxPTR " was given back and Allocate returned NULL",
                     op_index, entry_name(inst->entry), inst->owner.number, address);
    pthread_mutex_unlock(&verifier->lock);
}

#define PROBED_PAGE_SLOTS 65536u /* a power of two; 256 MiB of 4 KiB pages, 512 KiB of table */
#define PROBED_PAGE_BYTES 4096u

static size_t probed_slot(uintptr_t page)
{
    return (size_t)((page * UINT64_C(0x9E3779B97F4A7C15)) >> 48) & (PROBED_PAGE_SLOTS - 1);
}

/* Under the lock: true when every page of [frame, frame + bytes) was probed before. */
static bool pages_known_locked(const ks_verifier *verifier, uintptr_t frame, size_t bytes)
{
    if (verifier->probed_pages == NULL)
        return false;
    for (uintptr_t page = frame / PROBED_PAGE_BYTES; page <= (frame + bytes - 1) / PROBED_PAGE_BYTES; page++) {
        size_t slot = probed_slot(page);
        while (verifier->probed_pages[slot] != 0 && verifier->probed_pages[slot] != page + 1)
            slot = (slot + 1) & (PROBED_PAGE_SLOTS - 1);
        if (verifier->probed_pages[slot] == 0)
            return false;
    }
    return true;
}

/* Under the lock: remembers the pages of a frame that was just probed writable. */
static void pages_remember_locked(ks_verifier *verifier, uintptr_t frame, size_t bytes)
{
    if (verifier->probed_pages == NULL)
        verifier->probed_pages = calloc(PROBED_PAGE_SLOTS, sizeof *verifier->probed_pages);
    if (verifier->probed_pages == NULL)
        return; /* then every frame is probed: slower, still correct */
    for (uintptr_t page = frame / PROBED_PAGE_BYTES; page <= (frame + bytes - 1) / PROBED_PAGE_BYTES; page++) {
        if (verifier->probed_count >= PROBED_PAGE_SLOTS / 2) { /* keep probe runs short: start over */
            memset(verifier->probed_pages, 0, PROBED_PAGE_SLOTS * sizeof *verifier->probed_pages);
            verifier->probed_count = 0;
        }
        size_t slot = probed_slot(page);
        while (verifier->probed_pages[slot] != 0 && verifier->probed_pages[slot] != page + 1)
            slot = (slot + 1) & (PROBED_PAGE_SLOTS - 1);
        if (verifier->probed_pages[slot] == 0) {
            verifier->probed_pages[slot] = page + 1;
            verifier->probed_count++;
        }
    }
}

/* True when bytes at frame can all be written: the kernel writes zeros there (read(2) from
 * /dev/zero), and an unmapped or read-only page fails that call with EFAULT instead of faulting
 * this process. The pattern fill that follows overwrites the zeros. */
static bool frame_writable(int zero_fd, void *frame, size_t bytes)
{
    for (size_t done = 0; done < bytes;) {
        ssize_t got = read(zero_fd, (char *)frame + done, bytes - done);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return false;
        done += (size_t)got;
    }
    return true;
}

static PVOID verifier_allocate(PVOID context)
{
    verifier_instance *inst = context;
    ks_verifier *verifier = inst->session;
    uint64_t op_index = atomic_fetch_add(&verifier->op_count, 1);
    atomic_fetch_add(&inst->allocates_in_flight, 1);
    uint64_t frees_before = atomic_load(&inst->frees_completed);
    if (inst->check_needs_quiesce)
        pthread_rwlock_rdlock(&inst->check_lock);
    void *frame = inst->entry->dispatch->Allocate(inst->inner_context);
    if (inst->check_needs_quiesce)
        pthread_rwlock_unlock(&inst->check_lock);
    fault_batch batch;
    batch.count = 0;
    admit_verdict verdict = ADMIT_UNTRACKED;
    size_t probe_bytes = inst->framing.FrameSize != 0 ? inst->framing.FrameSize : 1;
    pthread_mutex_lock(&verifier->lock);
    if (frame != NULL && verifier->zero_fd >= 0 && !pages_known_locked(verifier, (uintptr_t)frame, probe_bytes)) {
        /* A page never probed: the kernel writes the frame first, outside the lock (a system
         * call); frames on known pages go straight on, under the one lock admit needs anyway. */
        pthread_mutex_unlock(&verifier->lock);
        if (!frame_writable(verifier->zero_fd, frame, probe_bytes)) {
            batch_add(&batch, inst, KS_FAULT_UNWRITABLE_FRAME, op_index, (uintptr_t)frame,
                      "Allocate returned %p, and its %zu bytes cannot be written (%s): the frame is dropped, "
                      "never touched",
                      frame, probe_bytes, strerror(errno));
            atomic_fetch_sub(&inst->allocates_in_flight, 1);
            finish_op(inst, op_index, &batch);
            return NULL;
        }
        pthread_mutex_lock(&verifier->lock);
        pages_remember_locked(verifier, (uintptr_t)frame, probe_bytes);
    }
    if (frame == NULL)
        check_null_locked(inst, frees_before, op_index, &batch);
    else
        verdict = admit_frame_locked(inst, (uintptr_t)frame, op_index, &batch);
    atomic_fetch_sub(&inst->allocates_in_flight, 1);
    pthread_mutex_unlock(&verifier->lock);
    if (verdict == ADMIT_TRACKED) {
        pattern_fill(frame, inst->framing.FrameSize, pattern_seed(verifier, op_index, 0));
    } else if (verdict == ADMIT_NO_MEMORY) {
        inst->entry->dispatch->Free(inst->inner_context, frame);
        note_internal_failure(inst, (uintptr_t)frame, op_index);
        frame = NULL;
    }
    finish_op(inst, op_index, &batch);
    return frame;
}

/* ---- Free and Touch ------------------------------------------------------------------------- */

typedef enum release_verdict { RELEASE_TRACKED, RELEASE_UNTRACKED, RELEASE_REFUSED } release_verdict;

/* Looks address up for a Free (remove = true) or a Touch (bumps the generation). */
static release_verdict lookup_locked(verifier_instance *inst, uintptr_t address, bool remove, uint64_t op_index,
                                     frame_snapshot *snap, fault_batch *batch)
{
    ks_shadow *shadow = inst->session->shadow;
    ks_shadow_node *node = address != 0 ? ks_shadow_find(shadow, address) : NULL;
    if (node != NULL && node->owner == &inst->owner) {
        snap->address = address;
        snap->serial = node->serial;
        snap->generation = node->generation;
        if (remove) {
            ks_shadow_remove(shadow, node);
            recent_free_remember(inst, address, op_index);
        } else {
            node->generation++;
        }
        return RELEASE_TRACKED;
    }
    /* An untracked frame may start where another instance's live frame starts (a cross-instance
     * double handout), so the record is consulted whatever the map holds at that address. */
    if (address != 0 && (remove ? faulted_forget(inst, address) : faulted_find(inst, address) >= 0))
        return RELEASE_UNTRACKED;
    describe_not_live(inst, address, op_index,
                      remove ? "Free of a frame not live in this instance" : "touch of a frame not live in this instance",
                      batch);
    return RELEASE_REFUSED;
}

static void verifier_free(PVOID context, PVOID buffer)
{
    verifier_instance *inst = context;
    ks_verifier *verifier = inst->session;
    uint64_t op_index = atomic_fetch_add(&verifier->op_count, 1);
    fault_batch batch;
    batch.count = 0;
    frame_snapshot snap;
    pthread_mutex_lock(&verifier->lock);
    release_verdict verdict = lookup_locked(inst, (uintptr_t)buffer, true, op_index, &snap, &batch);
    if (verdict == RELEASE_TRACKED)
        atomic_fetch_add(&inst->frees_in_flight, 1);
    pthread_mutex_unlock(&verifier->lock);
    if (verdict == RELEASE_TRACKED) {
        check_frame_pattern(inst, &snap, op_index, "Free", &batch);
        if (inst->check_needs_quiesce)
            pthread_rwlock_rdlock(&inst->check_lock);
        inst->entry->dispatch->Free(inst->inner_context, buffer);
        if (inst->check_needs_quiesce)
            pthread_rwlock_unlock(&inst->check_lock);
        atomic_fetch_add(&inst->frees_completed, 1);
        atomic_fetch_sub(&inst->frees_in_flight, 1);
    }
    finish_op(inst, op_index, &batch);
}

void ks_verifier_touch(void *instance_context, void *frame)
{
    verifier_instance *inst = instance_context;
    ks_verifier *verifier = inst->session;
    uint64_t op_index = atomic_fetch_add(&verifier->op_count, 1);
    fault_batch batch;
    batch.count = 0;
    frame_snapshot snap;
    pthread_mutex_lock(&verifier->lock);
    release_verdict verdict = lookup_locked(inst, (uintptr_t)frame, false, op_index, &snap, &batch);
    pthread_mutex_unlock(&verifier->lock);
    if (verdict == RELEASE_TRACKED) {
        check_frame_pattern(inst, &snap, op_index, "Touch", &batch);
        pattern_fill(frame, inst->framing.FrameSize, pattern_seed(verifier, snap.serial, snap.generation + 1));
    }
    finish_op(inst, op_index, &batch);
}

/* ---- DeleteAllocator ------------------------------------------------------------------------ */

/* Lists up to VERIFIER_LEAKS_LISTED leaked frames, releases them all; returns how many. */
static uint64_t release_leaks_locked(verifier_instance *inst, char *listed, size_t listed_bytes, uintptr_t *first)
{
    uint64_t leaked = inst->owner.live;
    size_t used = 0;
    unsigned shown = 0;
    *first = inst->owner.first != NULL ? inst->owner.first->start : 0;
    listed[0] = '\0';
    for (const ks_shadow_node *node = inst->owner.first; node != NULL && shown < VERIFIER_LEAKS_LISTED;
         node = node->owner_next, shown++) {
        int written = snprintf(listed + used, listed_bytes - used, "%s0x%" PRIxPTR " (op %" PRIu64 ")",
                               shown ? ", " : "", node->start, node->serial);
        if (written < 0 || (size_t)written >= listed_bytes - used)
            break;
        used += (size_t)written;
    }
    if (leaked > shown && used + 6 < listed_bytes)
        memcpy(listed + used, ", ...", 6);
    ks_shadow_release_owner(inst->session->shadow, &inst->owner);
    return leaked;
}

static void verifier_delete(PVOID context)
{
    verifier_instance *inst = context;
    ks_verifier *verifier = inst->session;
    uint64_t op_index = atomic_load(&verifier->op_count);
    fault_batch batch;
    batch.count = 0;
    run_self_check(inst, op_index, "at DeleteAllocator", &batch);
    char listed[200];
    uintptr_t first_leak;
    pthread_mutex_lock(&verifier->lock);
    uint64_t leaked = release_leaks_locked(inst, listed, sizeof listed, &first_leak);
    pthread_mutex_unlock(&verifier->lock);
    if (leaked > 0)
        batch_add(&batch, inst, KS_FAULT_LEAK, op_index, first_leak,
                  "%" PRIu64 " frame(s) still live at DeleteAllocator: %s", leaked, listed);
    inst->entry->dispatch->DeleteAllocator(inst->inner_context);
    batch_publish(verifier, &batch);
    pthread_rwlock_destroy(&inst->check_lock);
    instance_record_give(verifier, inst);
}

const KSALLOCATOR_DISPATCH ks_verifier_dispatch = {
    .InitializeAllocator = verifier_initialize,
    .DeleteAllocator = verifier_delete,
    .Allocate = verifier_allocate,
    .Free = verifier_free,
};

/* ---- session -------------------------------------------------------------------------------- */

NTSTATUS ks_verifier_create(const ks_verifier_options *options, ks_verifier **verifier_out, ks_error *err)
{
    ks_verifier *verifier = calloc(1, sizeof *verifier);
    if (verifier == NULL)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "verifier: cannot allocate a session");
    if (options != NULL)
        verifier->options = *options;
    if (verifier->options.max_faults_kept == 0)
        verifier->options.max_faults_kept = VERIFIER_DEFAULT_FAULTS_KEPT;
    verifier->faults = calloc(verifier->options.max_faults_kept, sizeof(ks_fault));
    NTSTATUS status = ks_shadow_create(&verifier->shadow, err);
    if (verifier->faults == NULL || !NT_SUCCESS(status)) {
        ks_shadow_destroy(verifier->shadow);
        free(verifier->faults);
        size_t kept = verifier->options.max_faults_kept;
        free(verifier);
        return NT_SUCCESS(status) ? ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES,
                                                 "verifier: cannot keep %zu faults (max_faults_kept)", kept)
                                  : status;
    }
    verifier->zero_fd = verifier->options.probe_frames ? open("/dev/zero", O_RDONLY | O_CLOEXEC) : -1;
    if (verifier->options.probe_frames && verifier->zero_fd < 0) {
        int open_errno = errno;
        ks_shadow_destroy(verifier->shadow);
        free(verifier->faults);
        free(verifier);
        return ks_error_set(err, STATUS_NOT_SUPPORTED, "verifier: probe_frames needs /dev/zero: %s",
                            strerror(open_errno));
    }
    pthread_mutex_init(&verifier->lock, NULL);
    verifier->salt = mix64(atomic_fetch_add(&sessions_created, 1) * PATTERN_GAMMA);
    ks_error_clear(&verifier->internal_error);
    *verifier_out = verifier;
    return STATUS_SUCCESS;
}

NTSTATUS ks_verifier_reset(ks_verifier *verifier, ks_error *err)
{
    pthread_mutex_lock(&verifier->lock);
    unsigned open = verifier->instances_open;
    uint64_t live = ks_shadow_count(verifier->shadow);
    pthread_mutex_unlock(&verifier->lock);
    if (open != 0 || live != 0)
        return ks_error_set(err, STATUS_DEVICE_BUSY,
                            "verifier: reset with %u instance(s) still open and %" PRIu64 " frame(s) tracked", open,
                            live);
    atomic_store(&verifier->op_count, 0);
    atomic_store(&verifier->fault_count, 0);
    atomic_store(&verifier->faults_kept, 0);
    atomic_store(&verifier->next_instance, 0);
    verifier->internal_failures = 0;
    ks_error_clear(&verifier->internal_error);
    verifier->salt = mix64(atomic_fetch_add(&sessions_created, 1) * PATTERN_GAMMA);
    return STATUS_SUCCESS;
}

void ks_verifier_destroy(ks_verifier *verifier)
{
    if (verifier == NULL)
        return;
    ks_shadow_destroy(verifier->shadow);
    pthread_mutex_destroy(&verifier->lock);
    if (verifier->zero_fd >= 0)
        close(verifier->zero_fd);
    free(verifier->probed_pages);
    while (verifier->spare_instances != NULL) {
        verifier_instance *inst = verifier->spare_instances;
        verifier->spare_instances = inst->next_spare;
        free(inst);
    }
    free(verifier->faults);
    free(verifier);
}

const KSALLOCATOR_FRAMING *ks_verifier_framing(void *instance_context)
{
    const verifier_instance *inst = instance_context;
    return &inst->framing;
}

void ks_verifier_self_check(void *instance_context)
{
    verifier_instance *inst = instance_context;
    fault_batch batch;
    batch.count = 0;
    run_self_check(inst, atomic_load(&inst->session->op_count), "on request", &batch);
    batch_publish(inst->session, &batch);
}

uint64_t ks_verifier_live(void *instance_context)
{
    verifier_instance *inst = instance_context;
    pthread_mutex_lock(&inst->session->lock);
    uint64_t live = inst->owner.live;
    pthread_mutex_unlock(&inst->session->lock);
    return live;
}

uint64_t ks_verifier_fault_count(const ks_verifier *verifier)
{
    return atomic_load(&verifier->fault_count);
}

const ks_fault *ks_verifier_fault_at(const ks_verifier *verifier, uint64_t index)
{
    if (index >= atomic_load_explicit(&verifier->faults_kept, memory_order_acquire))
        return NULL;
    return &verifier->faults[index];
}

uint64_t ks_verifier_op_count(const ks_verifier *verifier)
{
    return atomic_load(&verifier->op_count);
}

uint64_t ks_verifier_internal_failures(ks_verifier *verifier, ks_error *err)
{
    pthread_mutex_lock(&verifier->lock);
    uint64_t failures = verifier->internal_failures;
    if (err != NULL)
        *err = verifier->internal_error;
    pthread_mutex_unlock(&verifier->lock);
    return failures;
}
