/*
 * frame_set.h -- internal: the set of live frames an allocator keeps beside its frames.
 *
 * Allocators over a heap they cannot drop per instance (glibc, tcmalloc, a shared jemalloc arena,
 * the lookaside list's process heap) must still release every frame still live at
 * DeleteAllocator, and should turn a Free of a frame that is not theirs into a counted no-op
 * instead of heap corruption. They keep the addresses of their live frames in this set. It is
 * not part of the plugin ABI (harness/ksalloc.h): only allocators/ includes it, by relative path.
 *
 * Not thread-safe: callers serialise every call on one set (a mutex, or the instance's own
 * one-thread-at-a-time contract). Design, complexity and memory: frame_set.c.
 */
#ifndef KS_FRAME_SET_H
#define KS_FRAME_SET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The table a new set starts with unless its owner has a reason for more; a power of two. */
#define KS_FRAME_SET_MIN_CAPACITY 16u

typedef struct ks_frame_set {
    uintptr_t *slots; /* 0 marks an empty slot: no frame lives at address 0 */
    size_t capacity;  /* a power of two; 0 only for a set never initialised or destroyed */
    size_t count;     /* frames in the set; invariant: count * 2 <= capacity */
    unsigned shift;   /* 64 - log2(capacity), for Fibonacci hashing */
    uint64_t foreign_releases;      /* ks_frame_set_release calls for a frame not in the set */
    uintptr_t first_foreign_release; /* the first such address */
} ks_frame_set;

/* An empty set with a table of initial_capacity slots (a power of two, at least 2; it holds
 * initial_capacity / 2 frames before it first grows). False when initial_capacity is not such a
 * power of two or the table cannot be allocated; the set is then empty with no table (an insert
 * would give it one) and ks_frame_set_destroy is still safe. */
bool ks_frame_set_init(ks_frame_set *set, size_t initial_capacity);

/* Frees the table. Safe on a zero-filled or already destroyed set. The frames are the caller's:
 * release them first (ks_frame_set_next). */
void ks_frame_set_destroy(ks_frame_set *set);

/* Grows the table now so that the next more_frames inserts cannot fail. For an owner that must
 * not take a frame from its heap unless it can track it. False, set unchanged, when it cannot. */
bool ks_frame_set_reserve(ks_frame_set *set, size_t more_frames);

/* Adds frame, which must be non-NULL and not in the set. False, set unchanged, when the table is
 * full and cannot grow (never after a successful ks_frame_set_reserve that covers it). */
bool ks_frame_set_insert(ks_frame_set *set, const void *frame);

/* Removes frame; false when it is not in the set (NULL never is). */
bool ks_frame_set_remove(ks_frame_set *set, const void *frame);

/* The owner's Free: removes frame, or, when it is not in the set, counts it as a foreign release
 * (a Free of a frame not live here, which the owner then ignores) and returns false.
 * ks_frame_set_check reports foreign releases. */
bool ks_frame_set_release(ks_frame_set *set, const void *frame);

/* True when frame is in the set (NULL never is). */
bool ks_frame_set_contains(const ks_frame_set *set, const void *frame);

/* Visits every frame, in no particular order: start with *cursor = 0 and call until it returns
 * NULL. The set must not change during the walk. */
void *ks_frame_set_next(const ks_frame_set *set, size_t *cursor);

/* Bytes the table takes (what a `tracking_bytes` or `reserved_bytes` counter adds). */
size_t ks_frame_set_table_bytes(const ks_frame_set *set);

/* No foreign release so far, and the table's invariants: every frame aligned to align_bytes (a
 * power of two), listed once and reachable from its home slot; the count true and within the
 * load bound. On the first broken one writes "<owner>: ..." into why and returns false.
 * Allocates nothing. */
bool ks_frame_set_check(const ks_frame_set *set, size_t align_bytes, const char *owner, char *why, size_t why_bytes);

#endif /* KS_FRAME_SET_H */
