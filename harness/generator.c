/*
 * generator.c -- seeded workload profiles: the pins a profile uses (ks_profile_config) and the op
 * stream it produces (ks_generator_init / ks_generator_next).
 *
 * Design. A generator is a pure function of its seed and of the live view the engine shows it:
 * it keeps no addresses, only a 64-bit random state and, per pin, a target live count and a phase
 * word, so the same seed over the same allocator outcomes yields the same ops (and a recorded run
 * replays exactly). The random source is splitmix64: ks_generator holds one 64-bit word of state
 * and splitmix64 is the best-studied generator that fits in one (full 2^64 period, passes
 * BigCrush); bounded draws use Lemire's multiply-shift with rejection, so they are unbiased.
 * Every profile sizes itself from the pin's capacity: Frames when the framing asks for a count,
 * else 256, with the live target capped at 256 so a run stays cheap for any framing.
 *   lifo        a random walk between 0 and the target with drift (up phase: allocate 3/4, down
 *               phase: free 3/4), flipping at the ends; it always frees the newest frame.
 *   fifo        fills to the target, then alternates allocate / free-oldest like a streaming
 *               pin; once streaming, one op in eight touches a random live frame.
 *   random      allocates with probability 1/2 at half the target, 5/8 below, 3/8 above, and
 *               otherwise frees (3/4) or touches (1/4) a random live frame.
 *   burst       allocates until the target or a NULL, then frees everything in random order.
 *   fragmenting a random pin per op; each pin's target rises and falls in a triangle wave of its
 *               own period (so the pins' live sets interleave on the shared heap), random frees.
 *   capture, render, loopback   streaming over DMA frames, per pin: ALLOCATE, then the device op
 *               on the frame just allocated (loopback: copy the previous frame into it), and
 *               once the target is reached FREE of the oldest before each ALLOCATE; they need
 *               the workload's DMA device, so ks_profile_config asks for one.
 * Rules shared by all: after an Allocate on a pin returned NULL the generator frees (random and
 * fragmenting also touch) on that pin instead of allocating again, until the pin is empty, since
 * the view's flag clears only when an Allocate is served; and it never emits FREE or TOUCH on a
 * pin with nothing live (it allocates instead). With several pins the non-fragmenting profiles
 * pick a pin uniformly per op and keep their phase per pin.
 * ks_profile_config: fragmenting's pins ask base, max(64, base/4) and base*3 - 1 rounded up to
 * the alignment (a base of 0 stays "no requirement" on pins 0 and 2), each clamped to the
 * entry's max_frame_bytes so that a run at the largest size still opens; the shared heap holds
 * twice what all pins may have live (a page per frame counted where FrameSize is 0), at least
 * 4 MiB.
 * Cost: O(1) per op, no allocation. Thread safety: a generator belongs to one thread.
 */
#include <stdio.h>
#include <string.h>

#include "workload.h"

/* Live target when a pin sets no Frames, and the cap on any target. */
#define GENERATOR_DEFAULT_CAPACITY 256u
#define GENERATOR_MAX_TARGET 256u
/* fifo touches one op in this many. */
#define FIFO_TOUCH_ONE_IN 8u
/* fragmenting: per-pin wave period in ops, growing with the pin number so waves drift apart. */
#define WAVE_PERIOD_OPS 1024u
#define WAVE_PERIOD_STEP_OPS 384u
/* fragmenting: the size and alignment rules of ks_profile_config. */
#define FRAGMENTING_PIN_COUNT 3u
#define FRAGMENTING_MIN_FRAME_BYTES 64u
#define FRAGMENTING_ASSUMED_FRAME_BYTES 4096u
#define FRAGMENTING_MIN_HEAP_BYTES ((size_t)4 << 20)
#define HEAP_LIMIT_BYTES ((uint64_t)1 << 40)

_Static_assert(GENERATOR_MAX_TARGET <= GENERATOR_DEFAULT_CAPACITY, "the cap applies to the default capacity too");
_Static_assert(FRAGMENTING_PIN_COUNT <= KS_MAX_PINS, "fragmenting pins must fit a workload config");
_Static_assert(KS_PROFILE_COUNT == 8, "profile_names lists every profile");

static const char *const profile_names[KS_PROFILE_COUNT] = {
    [KS_PROFILE_LIFO] = "lifo",     [KS_PROFILE_FIFO] = "fifo",
    [KS_PROFILE_RANDOM] = "random", [KS_PROFILE_BURST] = "burst",
    [KS_PROFILE_FRAGMENTING] = "fragmenting", [KS_PROFILE_CAPTURE] = "capture",
    [KS_PROFILE_RENDER] = "render",           [KS_PROFILE_LOOPBACK] = "loopback",
};

/* Per-pin phase values. */
enum { PHASE_FILL = 0, PHASE_DRAIN = 1, PHASE_DEVICE = 2 };

bool ks_profile_uses_dma(ks_profile profile)
{
    return profile == KS_PROFILE_CAPTURE || profile == KS_PROFILE_RENDER || profile == KS_PROFILE_LOOPBACK;
}

const char *ks_profile_name(ks_profile profile)
{
    if ((unsigned)profile >= KS_PROFILE_COUNT)
        return "unknown";
    return profile_names[profile];
}

ks_profile ks_profile_from_name(const char *name)
{
    if (name == NULL)
        return KS_PROFILE_COUNT;
    for (unsigned i = 0; i < KS_PROFILE_COUNT; i++)
        if (strcmp(name, profile_names[i]) == 0)
            return (ks_profile)i;
    return KS_PROFILE_COUNT;
}

/* ---- random numbers ------------------------------------------------------------------------- */

static uint64_t splitmix64_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, bound), bound > 0 (Lemire, "Fast random integer generation in an interval"). */
static uint32_t random_below(ks_generator *gen, uint32_t bound)
{
    uint64_t product = (splitmix64_next(&gen->rng_state) >> 32) * (uint64_t)bound;
    uint32_t low = (uint32_t)product;
    if (low < bound) {
        uint32_t threshold = (uint32_t)(-bound) % bound;
        while (low < threshold) {
            product = (splitmix64_next(&gen->rng_state) >> 32) * (uint64_t)bound;
            low = (uint32_t)product;
        }
    }
    return (uint32_t)(product >> 32);
}

/* True with probability numerator / denominator. */
static bool random_chance(ks_generator *gen, uint32_t numerator, uint32_t denominator)
{
    return random_below(gen, denominator) < numerator;
}

/* ---- generator ------------------------------------------------------------------------------ */

void ks_generator_init(ks_generator *gen, ks_profile profile, uint64_t seed, const ks_live_view *view)
{
    memset(gen, 0, sizeof *gen);
    gen->profile = profile;
    gen->rng_state = seed;
    gen->pin_count = view->pin_count < KS_MAX_PINS ? view->pin_count : KS_MAX_PINS;
    for (unsigned pin = 0; pin < gen->pin_count; pin++) {
        uint32_t capacity = view->frames[pin] != 0 ? view->frames[pin] : GENERATOR_DEFAULT_CAPACITY;
        gen->target_live[pin] = capacity < GENERATOR_MAX_TARGET ? capacity : GENERATOR_MAX_TARGET;
        gen->phase[pin] = PHASE_FILL;
    }
}

static void emit(ks_op *op, ks_op_kind kind, unsigned pin, uint32_t k)
{
    memset(op, 0, sizeof *op);
    op->kind = (uint8_t)kind;
    op->pin = (uint8_t)pin;
    op->arg = k;
}

/* FREE or TOUCH of the k-th frame, or ALLOCATE when nothing is live (generators never free from
 * an empty pin). */
static void emit_on_live(ks_op *op, ks_op_kind kind, unsigned pin, uint32_t live, uint32_t k)
{
    if (live == 0)
        emit(op, KS_OP_ALLOCATE, pin, 0);
    else
        emit(op, kind, pin, k);
}

static void next_lifo(ks_generator *gen, const ks_live_view *view, unsigned pin, ks_op *op)
{
    uint32_t live = view->live[pin];
    if (live >= gen->target_live[pin] || (view->last_allocate_failed[pin] && live > 0))
        gen->phase[pin] = PHASE_DRAIN;
    else if (live == 0)
        gen->phase[pin] = PHASE_FILL;
    bool filling = gen->phase[pin] == PHASE_FILL;
    bool allocate = live == 0 || (!view->last_allocate_failed[pin] && live < gen->target_live[pin] &&
                                  random_chance(gen, filling ? 3 : 1, 4));
    if (allocate)
        emit(op, KS_OP_ALLOCATE, pin, 0);
    else
        emit_on_live(op, KS_OP_FREE, pin, live, live - 1);
}

static void next_fifo(ks_generator *gen, const ks_live_view *view, unsigned pin, ks_op *op)
{
    uint32_t live = view->live[pin];
    if (gen->phase[pin] == PHASE_FILL) {
        if (live < gen->target_live[pin] && !view->last_allocate_failed[pin]) {
            emit(op, KS_OP_ALLOCATE, pin, 0);
            return;
        }
        gen->phase[pin] = PHASE_DRAIN; /* steady streaming from here on */
    }
    if (live > 0 && random_chance(gen, 1, FIFO_TOUCH_ONE_IN)) {
        emit(op, KS_OP_TOUCH, pin, random_below(gen, live));
        return;
    }
    /* Steady state: live oscillates between target - 1 and target, oldest out first. */
    if (live >= gen->target_live[pin] || view->last_allocate_failed[pin])
        emit_on_live(op, KS_OP_FREE, pin, live, 0);
    else
        emit(op, KS_OP_ALLOCATE, pin, 0);
}

static void next_random(ks_generator *gen, const ks_live_view *view, unsigned pin, ks_op *op)
{
    uint32_t live = view->live[pin];
    uint32_t centre = gen->target_live[pin] / 2;
    uint32_t allocate_eighths = live < centre ? 5 : live > centre ? 3 : 4;
    bool allocate = !view->last_allocate_failed[pin] && random_chance(gen, allocate_eighths, 8);
    if (allocate || live == 0) {
        emit(op, KS_OP_ALLOCATE, pin, 0);
        return;
    }
    ks_op_kind kind = random_chance(gen, 3, 4) ? KS_OP_FREE : KS_OP_TOUCH;
    emit(op, kind, pin, random_below(gen, live));
}

static void next_burst(ks_generator *gen, const ks_live_view *view, unsigned pin, ks_op *op)
{
    uint32_t live = view->live[pin];
    if (gen->phase[pin] == PHASE_FILL && live > 0 &&
        (live >= gen->target_live[pin] || view->last_allocate_failed[pin]))
        gen->phase[pin] = PHASE_DRAIN;
    else if (gen->phase[pin] == PHASE_DRAIN && live == 0)
        gen->phase[pin] = PHASE_FILL;
    if (gen->phase[pin] == PHASE_FILL)
        emit(op, KS_OP_ALLOCATE, pin, 0);
    else
        emit(op, KS_OP_FREE, pin, random_below(gen, live));
}

/* The pin's live target at this point of its wave: a triangle between target/8 and target. */
static uint32_t wave_target(const ks_generator *gen, unsigned pin)
{
    uint32_t period_ops = WAVE_PERIOD_OPS + WAVE_PERIOD_STEP_OPS * pin;
    uint32_t half_ops = period_ops / 2;
    uint32_t position = gen->phase[pin] % period_ops;
    uint32_t rise = position < half_ops ? position : period_ops - position;
    uint32_t high = gen->target_live[pin];
    uint32_t low = high / 8;
    return low + (uint32_t)((uint64_t)(high - low) * rise / half_ops);
}

static void next_fragmenting(ks_generator *gen, const ks_live_view *view, unsigned pin, ks_op *op)
{
    uint32_t live = view->live[pin];
    uint32_t target = wave_target(gen, pin);
    gen->phase[pin]++;
    bool below = live < target;
    bool allocate = !view->last_allocate_failed[pin] && random_chance(gen, below ? 3 : 1, 4);
    if (allocate || live == 0) {
        emit(op, KS_OP_ALLOCATE, pin, 0);
        return;
    }
    ks_op_kind kind = random_chance(gen, 7, 8) ? KS_OP_FREE : KS_OP_TOUCH;
    emit(op, kind, pin, random_below(gen, live));
}

/* Allocate, device op on the new frame, and free the oldest once the window is full. */
static void next_dma_stream(ks_generator *gen, const ks_live_view *view, unsigned pin, ks_op_kind kind, ks_op *op)
{
    uint32_t live = view->live[pin];
    uint32_t frames_needed = kind == KS_OP_DMA_LOOPBACK ? 2 : 1;
    if (gen->phase[pin] == PHASE_DEVICE && live >= frames_needed) {
        gen->phase[pin] = PHASE_FILL;
        emit(op, kind, pin, live - frames_needed); /* loopback copies the previous frame into the newest */
        return;
    }
    gen->phase[pin] = PHASE_FILL;
    if (live > 0 && (live >= gen->target_live[pin] || view->last_allocate_failed[pin])) {
        emit(op, KS_OP_FREE, pin, 0);
        return;
    }
    emit(op, KS_OP_ALLOCATE, pin, 0);
    gen->phase[pin] = PHASE_DEVICE;
}

void ks_generator_next(ks_generator *gen, const ks_live_view *view, ks_op *op)
{
    unsigned pin_count = view->pin_count < gen->pin_count ? view->pin_count : gen->pin_count;
    unsigned pin = pin_count > 1 ? random_below(gen, pin_count) : 0;
    switch (gen->profile) {
    case KS_PROFILE_LIFO: next_lifo(gen, view, pin, op); break;
    case KS_PROFILE_FIFO: next_fifo(gen, view, pin, op); break;
    case KS_PROFILE_BURST: next_burst(gen, view, pin, op); break;
    case KS_PROFILE_FRAGMENTING: next_fragmenting(gen, view, pin, op); break;
    case KS_PROFILE_CAPTURE: next_dma_stream(gen, view, pin, KS_OP_DMA_CAPTURE, op); break;
    case KS_PROFILE_RENDER: next_dma_stream(gen, view, pin, KS_OP_DMA_RENDER, op); break;
    case KS_PROFILE_LOOPBACK: next_dma_stream(gen, view, pin, KS_OP_DMA_LOOPBACK, op); break;
    case KS_PROFILE_RANDOM:
    case KS_PROFILE_COUNT:
    default: next_random(gen, view, pin, op); break;
    }
}

/* ---- ks_profile_config ---------------------------------------------------------------------- */

static uint64_t round_up(uint64_t value, uint64_t align_bytes)
{
    return (value + align_bytes - 1) / align_bytes * align_bytes;
}

/* The three fragmenting frame sizes, clamped to what the entry serves. */
static NTSTATUS fragmenting_sizes(const ks_allocator_entry *entry, const KSALLOCATOR_FRAMING *base,
                                  uint32_t sizes[FRAGMENTING_PIN_COUNT], ks_error *err)
{
    uint64_t base_bytes = base->FrameSize;
    uint64_t quarter = base_bytes / 4 > FRAGMENTING_MIN_FRAME_BYTES ? base_bytes / 4 : FRAGMENTING_MIN_FRAME_BYTES;
    /* A base of 0 leaves the size to the allocator: pins 0 and 2 keep "no requirement". */
    uint64_t odd = base_bytes == 0 ? 0 : round_up(base_bytes * 3 - 1, ks_framing_align_bytes(base));
    uint64_t wanted[FRAGMENTING_PIN_COUNT] = {base_bytes, quarter, odd};
    for (unsigned i = 0; i < FRAGMENTING_PIN_COUNT; i++) {
        if (entry->max_frame_bytes != 0 && wanted[i] > entry->max_frame_bytes)
            wanted[i] = entry->max_frame_bytes;
        if (wanted[i] > UINT32_MAX)
            return ks_error_set(err, STATUS_INVALID_PARAMETER,
                                "profile fragmenting: pin %u frame size %llu (from FrameSize %u) does not fit "
                                "a ULONG",
                                i, (unsigned long long)wanted[i], (unsigned)base->FrameSize);
        sizes[i] = (uint32_t)wanted[i];
    }
    return STATUS_SUCCESS;
}

/* Twice what the pins could hold at once, at least FRAGMENTING_MIN_HEAP_BYTES. */
static NTSTATUS fragmenting_heap_bytes(const KSALLOCATOR_FRAMING *base, const uint32_t sizes[FRAGMENTING_PIN_COUNT],
                                       size_t *heap_bytes, ks_error *err)
{
    uint64_t frames = base->Frames != 0 ? base->Frames : GENERATOR_DEFAULT_CAPACITY;
    uint64_t total_bytes = 0;
    for (unsigned i = 0; i < FRAGMENTING_PIN_COUNT; i++) {
        uint64_t frame_bytes = sizes[i] != 0 ? sizes[i] : FRAGMENTING_ASSUMED_FRAME_BYTES;
        total_bytes += frames * frame_bytes; /* < 2^64: both factors are below 2^32 */
        if (total_bytes > HEAP_LIMIT_BYTES / 2)
            return ks_error_set(err, STATUS_INVALID_PARAMETER,
                                "profile fragmenting: %llu frames of up to %u bytes on 3 pins need a shared heap "
                                "over the 1 TiB limit",
                                (unsigned long long)frames, (unsigned)sizes[i]);
    }
    total_bytes *= 2;
    *heap_bytes = total_bytes > FRAGMENTING_MIN_HEAP_BYTES ? (size_t)total_bytes : FRAGMENTING_MIN_HEAP_BYTES;
    return STATUS_SUCCESS;
}

static NTSTATUS profile_config_fragmenting(const ks_allocator_entry *entry, ks_workload_config *config,
                                           ks_error *err)
{
    const KSALLOCATOR_FRAMING base = config->pins[0].framing;
    uint32_t sizes[FRAGMENTING_PIN_COUNT];
    NTSTATUS status = fragmenting_sizes(entry, &base, sizes, err);
    if (!NT_SUCCESS(status))
        return status;
    bool shared = (entry->caps & KS_CAP_SHARED_HEAP) != 0;
    if (shared) {
        status = fragmenting_heap_bytes(&base, sizes, &config->heap_bytes[0], err);
        if (!NT_SUCCESS(status))
            return status;
        config->heap_count = 1;
    }
    config->pin_count = FRAGMENTING_PIN_COUNT;
    for (unsigned i = 0; i < FRAGMENTING_PIN_COUNT; i++) {
        config->pins[i] = config->pins[0];
        config->pins[i].framing.FrameSize = sizes[i];
        config->pins[i].heap_index = shared ? 0 : -1;
    }
    return STATUS_SUCCESS;
}

NTSTATUS ks_profile_config(ks_profile profile, const ks_allocator_entry *entry, const char *allocator_name,
                           const KSALLOCATOR_FRAMING *base_framing, ks_workload_config *config, ks_error *err)
{
    if (config == NULL || entry == NULL || base_framing == NULL)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "profile config: %s is NULL",
                            config == NULL ? "config" : entry == NULL ? "entry" : "base framing");
    if ((unsigned)profile >= KS_PROFILE_COUNT)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "profile config: unknown profile %d", (int)profile);
    const char *name = allocator_name != NULL ? allocator_name : entry->name != NULL ? entry->name : "";
    if (strlen(name) >= KS_ALLOCATOR_NAME_BYTES)
        return ks_error_set(err, STATUS_INVALID_PARAMETER,
                            "profile %s: allocator name of %zu bytes is over the %u-byte limit",
                            ks_profile_name(profile), strlen(name), KS_ALLOCATOR_NAME_BYTES - 1);
    if (!ks_framing_align_valid(base_framing))
        return ks_error_set(err, STATUS_INVALID_PARAMETER,
                            "profile %s: FileAlignment 0x%x is not an alignment mask, expected 2^k - 1",
                            ks_profile_name(profile), (unsigned)base_framing->FileAlignment);
    memset(config, 0, sizeof *config);
    config->pin_count = 1;
    config->pins[0].entry = entry;
    strcpy(config->pins[0].allocator, name);
    config->pins[0].framing = *base_framing;
    config->pins[0].heap_index = -1;
    if (ks_profile_uses_dma(profile))
        snprintf(config->dma_options, sizeof config->dma_options, "%s", KS_PROFILE_DEFAULT_DMA_OPTIONS);
    if (profile == KS_PROFILE_FRAGMENTING)
        return profile_config_fragmenting(entry, config, err);
    return STATUS_SUCCESS;
}
