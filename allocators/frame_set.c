/*
 * frame_set.c -- internal: the live-frame set shared by `system`, `lookaside`, `jemalloc` (shared
 * arena mode) and `tcmalloc`.
 *
 * Design: a hash set of frame addresses with open addressing, linear probing and backward-shift
 * deletion: no tombstones, so a long run of Allocate/Free never degrades the probes. Fibonacci
 * hashing (multiply by 2^64 / golden ratio, keep the high bits) spreads aligned addresses whose
 * low bits are all zero. The table is kept at most half full and doubles when an insert would pass
 * that; it never shrinks, so a set sized by its high-water mark stays sized for it. Address 0 marks
 * an empty slot (no frame lives there). The set lives outside the frames on purpose: a header or
 * trailer in the frame would change what the heap is asked for -- a 4096-byte, 4096-aligned frame
 * would cost 8 KiB, a 4096-byte tcmalloc frame would move to the 4608-byte class -- and would sit
 * where a driver's overrun lands.
 *
 * Complexity: insert, remove and lookup are expected O(1) at load factor <= 1/2; a growth rehashes
 * every frame, O(capacity), amortised O(1) per insert. ks_frame_set_next and ks_frame_set_check
 * are O(capacity) (the check's probe walks are short at this load).
 *
 * Memory: 8 bytes per slot, 2 to 4 slots per frame at the high-water mark of live frames, so 16
 * to 32 bytes per frame; at least the initial capacity.
 *
 * Thread safety: none; every caller serialises the calls on one set (see frame_set.h).
 */
#include "frame_set.h"

#include <stdio.h>
#include <stdlib.h>

#define FRAME_SET_FIBONACCI UINT64_C(0x9E3779B97F4A7C15) /* 2^64 / golden ratio, odd */

_Static_assert(sizeof(uintptr_t) == sizeof(uint64_t), "the set hashes 64-bit addresses");
_Static_assert((KS_FRAME_SET_MIN_CAPACITY & (KS_FRAME_SET_MIN_CAPACITY - 1)) == 0 && KS_FRAME_SET_MIN_CAPACITY >= 2,
               "capacity is a power of two that holds a frame");

static size_t frame_set_home(const ks_frame_set *set, uintptr_t frame)
{
    return (size_t)(((uint64_t)frame * FRAME_SET_FIBONACCI) >> set->shift);
}

bool ks_frame_set_init(ks_frame_set *set, size_t initial_capacity)
{
    bool power_of_two = initial_capacity >= 2 && (initial_capacity & (initial_capacity - 1)) == 0;
    set->slots = power_of_two ? calloc(initial_capacity, sizeof *set->slots) : NULL;
    set->capacity = set->slots != NULL ? initial_capacity : 0;
    set->count = 0;
    set->shift = power_of_two ? 64u - (unsigned)__builtin_ctzll((unsigned long long)initial_capacity) : 0;
    set->foreign_releases = 0;
    set->first_foreign_release = 0;
    return set->slots != NULL;
}

void ks_frame_set_destroy(ks_frame_set *set)
{
    free(set->slots);
    set->slots = NULL;
    set->capacity = 0;
    set->count = 0;
}

/* Puts a frame known to be absent into the first empty slot of its probe run. */
static void frame_set_place(ks_frame_set *set, uintptr_t frame)
{
    size_t mask = set->capacity - 1;
    size_t slot = frame_set_home(set, frame);
    while (set->slots[slot] != 0)
        slot = (slot + 1) & mask;
    set->slots[slot] = frame;
}

static bool frame_set_rehash(ks_frame_set *set, size_t capacity)
{
    ks_frame_set bigger;
    if (!ks_frame_set_init(&bigger, capacity))
        return false;
    for (size_t slot = 0; slot < set->capacity; slot++)
        if (set->slots[slot] != 0)
            frame_set_place(&bigger, set->slots[slot]);
    free(set->slots);
    set->slots = bigger.slots;
    set->capacity = bigger.capacity;
    set->shift = bigger.shift;
    return true;
}

bool ks_frame_set_reserve(ks_frame_set *set, size_t more_frames)
{
    if (more_frames > SIZE_MAX / 2 - set->count)
        return false;
    size_t needed = (set->count + more_frames) * 2;
    size_t capacity = set->capacity != 0 ? set->capacity : KS_FRAME_SET_MIN_CAPACITY;
    while (capacity < needed) {
        if (capacity > SIZE_MAX / 2 / sizeof *set->slots)
            return false;
        capacity *= 2;
    }
    return (capacity == set->capacity && set->slots != NULL) || frame_set_rehash(set, capacity);
}

bool ks_frame_set_insert(ks_frame_set *set, const void *frame)
{
    if (!ks_frame_set_reserve(set, 1))
        return false;
    frame_set_place(set, (uintptr_t)frame);
    set->count++;
    return true;
}

/* The slot holding frame, or capacity when it is not in the set. */
static size_t frame_set_find(const ks_frame_set *set, uintptr_t frame)
{
    if (frame == 0 || set->capacity == 0)
        return set->capacity;
    size_t mask = set->capacity - 1;
    for (size_t slot = frame_set_home(set, frame);; slot = (slot + 1) & mask) {
        if (set->slots[slot] == frame)
            return slot;
        if (set->slots[slot] == 0)
            return set->capacity;
    }
}

bool ks_frame_set_contains(const ks_frame_set *set, const void *frame)
{
    return frame_set_find(set, (uintptr_t)frame) != set->capacity;
}

/* Every later entry of the probe run that may move back into the hole does so, so that each
 * entry stays reachable from its home slot without a tombstone. */
bool ks_frame_set_remove(ks_frame_set *set, const void *frame)
{
    size_t hole = frame_set_find(set, (uintptr_t)frame);
    if (hole == set->capacity)
        return false;
    size_t mask = set->capacity - 1;
    for (size_t next = (hole + 1) & mask; set->slots[next] != 0; next = (next + 1) & mask) {
        size_t home = frame_set_home(set, set->slots[next]);
        /* It may move iff its home is not strictly after the hole on the way to next. */
        if (((next - home) & mask) >= ((next - hole) & mask)) {
            set->slots[hole] = set->slots[next];
            hole = next;
        }
    }
    set->slots[hole] = 0;
    set->count--;
    return true;
}

bool ks_frame_set_release(ks_frame_set *set, const void *frame)
{
    if (ks_frame_set_remove(set, frame))
        return true;
    if (set->foreign_releases++ == 0)
        set->first_foreign_release = (uintptr_t)frame;
    return false;
}

void *ks_frame_set_next(const ks_frame_set *set, size_t *cursor)
{
    for (size_t slot = *cursor; slot < set->capacity; slot++) {
        if (set->slots[slot] != 0) {
            *cursor = slot + 1;
            return (void *)set->slots[slot];
        }
    }
    *cursor = set->capacity;
    return NULL;
}

size_t ks_frame_set_table_bytes(const ks_frame_set *set)
{
    return set->capacity * sizeof *set->slots;
}

/* The walk from the frame's home slot to its own slot meets no empty slot (else a lookup stops
 * short) and no other copy of the frame (else a remove leaves one behind). */
static bool frame_set_check_slot(const ks_frame_set *set, size_t slot, const char *owner, char *why,
                                 size_t why_bytes)
{
    size_t mask = set->capacity - 1;
    uintptr_t frame = set->slots[slot];
    for (size_t probe = frame_set_home(set, frame); probe != slot; probe = (probe + 1) & mask) {
        if (set->slots[probe] == 0) {
            snprintf(why, why_bytes, "%s: live frame %p in slot %zu is unreachable from its home slot %zu (slot %zu "
                     "is empty)", owner, (void *)frame, slot, frame_set_home(set, frame), probe);
            return false;
        }
        if (set->slots[probe] == frame) {
            snprintf(why, why_bytes, "%s: live frame %p is listed twice, in slots %zu and %zu", owner, (void *)frame,
                     probe, slot);
            return false;
        }
    }
    return true;
}

bool ks_frame_set_check(const ks_frame_set *set, size_t align_bytes, const char *owner, char *why, size_t why_bytes)
{
    if (set->foreign_releases != 0) {
        snprintf(why, why_bytes, "%s: %llu Free call(s) of a frame not live in this instance, first %p", owner,
                 (unsigned long long)set->foreign_releases, (void *)set->first_foreign_release);
        return false;
    }
    size_t entries = 0;
    for (size_t slot = 0; slot < set->capacity; slot++) {
        uintptr_t frame = set->slots[slot];
        if (frame == 0)
            continue;
        entries++;
        if (frame & (align_bytes - 1)) {
            snprintf(why, why_bytes, "%s: live frame %p is not aligned to %zu bytes", owner, (void *)frame,
                     align_bytes);
            return false;
        }
        if (!frame_set_check_slot(set, slot, owner, why, why_bytes))
            return false;
    }
    if (entries != set->count || set->count * 2 > set->capacity) {
        snprintf(why, why_bytes, "%s: live-frame table holds %zu entries but counts %zu (capacity %zu)", owner,
                 entries, set->count, set->capacity);
        return false;
    }
    return true;
}
