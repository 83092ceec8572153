/*
 * shadow.h -- the verifier's shadow map: every live frame of a session as an interval
 * [start, start + length_bytes), kept in an ordered map keyed by start address.
 *
 * The intervals in one map are pairwise disjoint (insert refuses an overlapping one), so the
 * live interval that overlaps a query [a, a + n), if any, is either the one starting at or below
 * a or the first one starting above a: two O(log live) descents answer "does this new frame
 * overlap anything live?" for any number of instances sharing the map. Each node also sits on
 * its owner's intrusive list (the instance that allocated it), in allocation order, so the
 * frames one instance still holds at DeleteAllocator are listed without walking the tree.
 *
 * Nodes come from a pool of slabs threaded on a free list: once the pool has grown to the peak
 * live count, insert and remove never call malloc.
 *
 * Not thread-safe: the caller (harness/verifier.c) serialises every call with its own lock.
 */
#ifndef KS_SHADOW_H
#define KS_SHADOW_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "ksalloc.h"

typedef struct ks_shadow ks_shadow;
typedef struct ks_shadow_owner ks_shadow_owner;

typedef struct ks_shadow_node {
    uintptr_t start;
    size_t length_bytes;      /* > 0 */
    ks_shadow_owner *owner;   /* the instance that holds the frame */
    uint64_t serial;          /* unique per frame in the session (the verifier: its Allocate's op index) */
    uint64_t generation;      /* bumped by each user write (ks_verifier_touch); 0 at insert */
    /* Private to shadow.c: AVL links and height (a leaf has height 1). */
    struct ks_shadow_node *left;
    struct ks_shadow_node *right;
    int height;
    /* The owner's list, oldest first. */
    struct ks_shadow_node *owner_prev;
    struct ks_shadow_node *owner_next;
} ks_shadow_node;

/* One per allocator instance; the caller embeds it and must not touch the list fields. */
struct ks_shadow_owner {
    unsigned number;       /* instance number in the session, for messages */
    void *context;         /* the caller's own record of the instance */
    ks_shadow_node *first; /* oldest live frame */
    ks_shadow_node *last;  /* newest live frame */
    uint64_t live;         /* frames on the list */
};

NTSTATUS ks_shadow_create(ks_shadow **map, ks_error *err);
/* Frees every slab; nodes still in the map (and on owners' lists) vanish with them. */
void ks_shadow_destroy(ks_shadow *map);

void ks_shadow_owner_init(ks_shadow_owner *owner, unsigned number, void *context);

/*
 * Inserts [start, start + length_bytes) for owner with the given serial and generation 0, and
 * puts it last on the owner's list. An interval that would end past UINTPTR_MAX is clipped
 * there. Returns STATUS_INVALID_PARAMETER, inserting nothing, when length_bytes is 0 or the
 * interval overlaps one already in the map (*node is then that one, the lowest such), and
 * STATUS_INSUFFICIENT_RESOURCES when the node pool cannot grow (*node NULL).
 */
NTSTATUS ks_shadow_insert(ks_shadow *map, ks_shadow_owner *owner, uintptr_t start, size_t length_bytes,
                          uint64_t serial, ks_shadow_node **node);

/* Takes node (which must be in map) out of the tree and its owner's list, back to the pool. */
void ks_shadow_remove(ks_shadow *map, ks_shadow_node *node);

/* Removes every node of owner. O(live of owner * log live). */
void ks_shadow_release_owner(ks_shadow *map, ks_shadow_owner *owner);

/* The node starting exactly at start, or NULL. */
ks_shadow_node *ks_shadow_find(const ks_shadow *map, uintptr_t start);
/* The node with the greatest start <= address, or NULL. */
ks_shadow_node *ks_shadow_at_or_below(const ks_shadow *map, uintptr_t address);
/* The node with the least start > address, or NULL. */
ks_shadow_node *ks_shadow_above(const ks_shadow *map, uintptr_t address);
/* The lowest node overlapping [start, start + length_bytes), or NULL (also for length 0). */
ks_shadow_node *ks_shadow_first_overlap(const ks_shadow *map, uintptr_t start, size_t length_bytes);
/* The node whose interval contains address, or NULL. */
ks_shadow_node *ks_shadow_containing(const ks_shadow *map, uintptr_t address);

uint64_t ks_shadow_count(const ks_shadow *map);
/* Slabs the node pool has taken from malloc so far (for tests of the steady state). */
size_t ks_shadow_slab_count(const ks_shadow *map);

/*
 * Full consistency check, O(live): AVL heights and balance, strictly increasing starts,
 * disjoint neighbours, non-zero lengths, the node count, and each node's owner-list links.
 * Writes the first broken invariant into why[why_bytes] and returns STATUS_DATA_ERROR, or
 * returns STATUS_SUCCESS.
 */
NTSTATUS ks_shadow_check(const ks_shadow *map, char *why, size_t why_bytes);
/* Walks owner's list: every node is in map under its start, names owner, and the length of the
 * list equals owner->live. Same return convention. */
NTSTATUS ks_shadow_owner_check(const ks_shadow *map, const ks_shadow_owner *owner, char *why, size_t why_bytes);

/*
 * Fault injection for tests, process-wide: the next growths_allowed slab growths succeed and
 * every one after fails as if malloc had returned NULL. SIZE_MAX (the initial value) turns it
 * off.
 */
void ks_shadow_inject_growth_failure(size_t growths_allowed);

#endif
