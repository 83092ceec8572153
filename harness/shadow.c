/*
 * shadow.c -- the shadow map of live frames (see shadow.h).
 *
 * Design: an AVL tree keyed by interval start. AVL rather than red-black because lookups (one
 * or two per verified op) outnumber updates and AVL's tighter height bound (< 1.44 log2 n) makes
 * them shorter; the recursive insert and remove are short enough to read against the textbook.
 * Recursion depth is the height, under 64 for any count that fits in memory. Because intervals
 * are disjoint, overlap with [a, a + n) needs only the predecessor-or-equal of a and the
 * successor of a. Every node is also on its owner's doubly linked list so that one instance's
 * frames are released in O(its live count).
 *
 * Complexity: insert, remove, find, neighbour and overlap queries O(log live); check O(live).
 * Memory: one ks_shadow_node (80 bytes on LP64) per live frame, plus free nodes kept in slabs
 * sized to the peak live count. Slabs double (64 nodes up to 16384) and are never returned
 * before ks_shadow_destroy, so a steady state makes no malloc call.
 *
 * Thread safety: none; the verifier holds its session lock around every call.
 *
 * Fuzz builds: no function here carries the fuzzer's coverage instrumentation. The branches of
 * an AVL tree describe the tree's shape, which says nothing about the allocator under test, yet
 * their comparison callbacks were the largest single cost of an allocator fuzz target (perf,
 * fuzz_alloc_pool: __sanitizer_cov_trace_*cmp* from avl_insert/avl_remove, about 7% of samples),
 * and shape features would steer the fuzzer towards inputs that only reshape the tree. Sanitizer
 * checks stay.
 */
#include "shadow.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((no_sanitize("coverage"))), apply_to = function)
#endif

#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#define SHADOW_FIRST_SLAB_NODES 64u
#define SHADOW_MAX_SLAB_NODES 16384u

_Static_assert((SHADOW_FIRST_SLAB_NODES & (SHADOW_FIRST_SLAB_NODES - 1)) == 0, "slab sizes double from a power of two");
_Static_assert(SHADOW_MAX_SLAB_NODES >= SHADOW_FIRST_SLAB_NODES, "the slab cap must not be below the first slab");
_Static_assert(sizeof(void *) != 8 || sizeof(ks_shadow_node) == 80, "the memory figure in the paragraph above");

typedef struct shadow_slab {
    struct shadow_slab *next;
    size_t node_count;
    ks_shadow_node nodes[];
} shadow_slab;

struct ks_shadow {
    ks_shadow_node *root;
    uint64_t node_count;      /* nodes in the tree */
    ks_shadow_node *free_nodes; /* linked through ->left */
    shadow_slab *slabs;
    size_t slab_count;
    size_t pool_nodes;        /* nodes in all slabs */
};

static _Atomic size_t shadow_growths_allowed = SIZE_MAX;

void ks_shadow_inject_growth_failure(size_t growths_allowed)
{
    atomic_store(&shadow_growths_allowed, growths_allowed);
}

/* Consumes one permitted growth; false once injection has used them up. */
static int shadow_growth_permitted(void)
{
    size_t allowed = atomic_load(&shadow_growths_allowed);
    while (allowed != SIZE_MAX) {
        if (allowed == 0)
            return 0;
        if (atomic_compare_exchange_weak(&shadow_growths_allowed, &allowed, allowed - 1))
            return 1;
    }
    return 1;
}

/* ---- node pool ------------------------------------------------------------------------------ */

static NTSTATUS pool_grow(ks_shadow *map)
{
    size_t nodes = map->pool_nodes < SHADOW_FIRST_SLAB_NODES ? SHADOW_FIRST_SLAB_NODES : map->pool_nodes;
    if (nodes > SHADOW_MAX_SLAB_NODES)
        nodes = SHADOW_MAX_SLAB_NODES;
    if (!shadow_growth_permitted())
        return STATUS_INSUFFICIENT_RESOURCES;
    shadow_slab *slab = malloc(sizeof *slab + nodes * sizeof(ks_shadow_node));
    if (slab == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    slab->next = map->slabs;
    slab->node_count = nodes;
    map->slabs = slab;
    map->slab_count++;
    map->pool_nodes += nodes;
    for (size_t i = 0; i < nodes; i++) {
        slab->nodes[i].left = map->free_nodes;
        map->free_nodes = &slab->nodes[i];
    }
    return STATUS_SUCCESS;
}

static ks_shadow_node *pool_take(ks_shadow *map)
{
    if (map->free_nodes == NULL && !NT_SUCCESS(pool_grow(map)))
        return NULL;
    ks_shadow_node *node = map->free_nodes;
    map->free_nodes = node->left;
    return node;
}

static void pool_give(ks_shadow *map, ks_shadow_node *node)
{
    node->owner = NULL;
    node->right = NULL;
    node->left = map->free_nodes;
    map->free_nodes = node;
}

NTSTATUS ks_shadow_create(ks_shadow **map_out, ks_error *err)
{
    ks_shadow *map = calloc(1, sizeof *map);
    if (map == NULL)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "shadow map: cannot allocate %zu bytes",
                            sizeof *map);
    *map_out = map;
    return STATUS_SUCCESS;
}

void ks_shadow_destroy(ks_shadow *map)
{
    if (map == NULL)
        return;
    shadow_slab *slab = map->slabs;
    while (slab != NULL) {
        shadow_slab *next = slab->next;
        free(slab);
        slab = next;
    }
    free(map);
}

/* ---- AVL ------------------------------------------------------------------------------------ */

static int avl_height(const ks_shadow_node *node)
{
    return node ? node->height : 0;
}

static void avl_update(ks_shadow_node *node)
{
    int left = avl_height(node->left), right = avl_height(node->right);
    node->height = 1 + (left > right ? left : right);
}

static ks_shadow_node *avl_rotate_right(ks_shadow_node *top)
{
    ks_shadow_node *pivot = top->left;
    top->left = pivot->right;
    pivot->right = top;
    avl_update(top);
    avl_update(pivot);
    return pivot;
}

static ks_shadow_node *avl_rotate_left(ks_shadow_node *top)
{
    ks_shadow_node *pivot = top->right;
    top->right = pivot->left;
    pivot->left = top;
    avl_update(top);
    avl_update(pivot);
    return pivot;
}

/* Restores |balance| <= 1 at node after one of its subtrees changed height by one. */
static ks_shadow_node *avl_rebalance(ks_shadow_node *node)
{
    avl_update(node);
    int balance = avl_height(node->left) - avl_height(node->right);
    if (balance > 1) {
        if (avl_height(node->left->left) < avl_height(node->left->right))
            node->left = avl_rotate_left(node->left);
        return avl_rotate_right(node);
    }
    if (balance < -1) {
        if (avl_height(node->right->right) < avl_height(node->right->left))
            node->right = avl_rotate_right(node->right);
        return avl_rotate_left(node);
    }
    return node;
}

/* fresh->start is not in the tree (insert checked for overlap first). */
static ks_shadow_node *avl_insert(ks_shadow_node *root, ks_shadow_node *fresh)
{
    if (root == NULL)
        return fresh;
    if (fresh->start < root->start)
        root->left = avl_insert(root->left, fresh);
    else
        root->right = avl_insert(root->right, fresh);
    return avl_rebalance(root);
}

static ks_shadow_node *avl_detach_min(ks_shadow_node *root, ks_shadow_node **min)
{
    if (root->left == NULL) {
        *min = root;
        return root->right;
    }
    root->left = avl_detach_min(root->left, min);
    return avl_rebalance(root);
}

static ks_shadow_node *avl_remove(ks_shadow_node *root, uintptr_t start, ks_shadow_node **removed)
{
    if (root == NULL)
        return NULL;
    if (start < root->start) {
        root->left = avl_remove(root->left, start, removed);
    } else if (start > root->start) {
        root->right = avl_remove(root->right, start, removed);
    } else {
        *removed = root;
        if (root->left == NULL)
            return root->right;
        if (root->right == NULL)
            return root->left;
        ks_shadow_node *successor = NULL;
        ks_shadow_node *right = avl_detach_min(root->right, &successor);
        successor->left = root->left;
        successor->right = right;
        return avl_rebalance(successor);
    }
    return avl_rebalance(root);
}

/* ---- owner lists ---------------------------------------------------------------------------- */

void ks_shadow_owner_init(ks_shadow_owner *owner, unsigned number, void *context)
{
    owner->number = number;
    owner->context = context;
    owner->first = NULL;
    owner->last = NULL;
    owner->live = 0;
}

static void owner_append(ks_shadow_owner *owner, ks_shadow_node *node)
{
    node->owner = owner;
    node->owner_next = NULL;
    node->owner_prev = owner->last;
    if (owner->last != NULL)
        owner->last->owner_next = node;
    else
        owner->first = node;
    owner->last = node;
    owner->live++;
}

static void owner_unlink(ks_shadow_owner *owner, ks_shadow_node *node)
{
    if (node->owner_prev != NULL)
        node->owner_prev->owner_next = node->owner_next;
    else
        owner->first = node->owner_next;
    if (node->owner_next != NULL)
        node->owner_next->owner_prev = node->owner_prev;
    else
        owner->last = node->owner_prev;
    owner->live--;
}

/* ---- queries -------------------------------------------------------------------------------- */

/* One past the last byte, clipped at UINTPTR_MAX so that end > start always holds. */
static uintptr_t interval_end(uintptr_t start, size_t length_bytes)
{
    return length_bytes > UINTPTR_MAX - start ? UINTPTR_MAX : start + length_bytes;
}

ks_shadow_node *ks_shadow_find(const ks_shadow *map, uintptr_t start)
{
    ks_shadow_node *node = map->root;
    while (node != NULL && node->start != start)
        node = start < node->start ? node->left : node->right;
    return node;
}

ks_shadow_node *ks_shadow_at_or_below(const ks_shadow *map, uintptr_t address)
{
    ks_shadow_node *best = NULL;
    for (ks_shadow_node *node = map->root; node != NULL;) {
        if (node->start <= address) {
            best = node;
            node = node->right;
        } else {
            node = node->left;
        }
    }
    return best;
}

ks_shadow_node *ks_shadow_above(const ks_shadow *map, uintptr_t address)
{
    ks_shadow_node *best = NULL;
    for (ks_shadow_node *node = map->root; node != NULL;) {
        if (node->start > address) {
            best = node;
            node = node->left;
        } else {
            node = node->right;
        }
    }
    return best;
}

ks_shadow_node *ks_shadow_first_overlap(const ks_shadow *map, uintptr_t start, size_t length_bytes)
{
    if (length_bytes == 0)
        return NULL;
    /* Disjointness: nodes starting below `below` end at or before below->start <= start. */
    ks_shadow_node *below = ks_shadow_at_or_below(map, start);
    if (below != NULL && interval_end(below->start, below->length_bytes) > start)
        return below;
    ks_shadow_node *above = ks_shadow_above(map, start);
    if (above != NULL && above->start < interval_end(start, length_bytes))
        return above;
    return NULL;
}

ks_shadow_node *ks_shadow_containing(const ks_shadow *map, uintptr_t address)
{
    ks_shadow_node *below = ks_shadow_at_or_below(map, address);
    if (below != NULL && interval_end(below->start, below->length_bytes) > address)
        return below;
    return NULL;
}

uint64_t ks_shadow_count(const ks_shadow *map)
{
    return map->node_count;
}

size_t ks_shadow_slab_count(const ks_shadow *map)
{
    return map->slab_count;
}

/* ---- updates -------------------------------------------------------------------------------- */

NTSTATUS ks_shadow_insert(ks_shadow *map, ks_shadow_owner *owner, uintptr_t start, size_t length_bytes,
                          uint64_t serial, ks_shadow_node **node_out)
{
    *node_out = NULL;
    if (length_bytes == 0)
        return STATUS_INVALID_PARAMETER;
    ks_shadow_node *clash = ks_shadow_first_overlap(map, start, length_bytes);
    if (clash != NULL) {
        *node_out = clash;
        return STATUS_INVALID_PARAMETER;
    }
    ks_shadow_node *node = pool_take(map);
    if (node == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    node->start = start;
    node->length_bytes = interval_end(start, length_bytes) - start;
    node->serial = serial;
    node->generation = 0;
    node->left = NULL;
    node->right = NULL;
    node->height = 1;
    map->root = avl_insert(map->root, node);
    map->node_count++;
    owner_append(owner, node);
    *node_out = node;
    return STATUS_SUCCESS;
}

void ks_shadow_remove(ks_shadow *map, ks_shadow_node *node)
{
    ks_shadow_node *removed = NULL;
    map->root = avl_remove(map->root, node->start, &removed);
    if (removed == NULL)
        return; /* not in this map: nothing to undo, and the pool must not get a foreign node */
    map->node_count--;
    owner_unlink(removed->owner, removed);
    pool_give(map, removed);
}

void ks_shadow_release_owner(ks_shadow *map, ks_shadow_owner *owner)
{
    while (owner->first != NULL)
        ks_shadow_remove(map, owner->first);
}

/* ---- consistency check ---------------------------------------------------------------------- */

typedef struct check_walk {
    char *why;
    size_t why_bytes;
    uint64_t visited;
    const ks_shadow_node *previous; /* in-order predecessor of the node being visited */
    int failed;
} check_walk;

static int check_fail(check_walk *walk, const ks_shadow_node *node, const char *what)
{
    if (!walk->failed && walk->why_bytes > 0)
        snprintf(walk->why, walk->why_bytes, "shadow map: node [0x%" PRIxPTR ", +%zu) %s", node->start,
                 node->length_bytes, what);
    walk->failed = 1;
    return -1;
}

static int check_owner_links(check_walk *walk, const ks_shadow_node *node)
{
    const ks_shadow_owner *owner = node->owner;
    if (owner == NULL)
        return check_fail(walk, node, "has no owner");
    if (node->owner_prev ? node->owner_prev->owner_next != node || node->owner_prev->owner != owner
                         : owner->first != node)
        return check_fail(walk, node, "has a broken backward owner-list link");
    if (node->owner_next ? node->owner_next->owner_prev != node || node->owner_next->owner != owner
                         : owner->last != node)
        return check_fail(walk, node, "has a broken forward owner-list link");
    return 0;
}

static int check_visit(check_walk *walk, const ks_shadow_node *node)
{
    if (node->length_bytes == 0)
        return check_fail(walk, node, "has length 0");
    const ks_shadow_node *previous = walk->previous;
    if (previous != NULL && previous->start >= node->start)
        return check_fail(walk, node, "is out of order (its in-order predecessor starts at or above it)");
    if (previous != NULL && interval_end(previous->start, previous->length_bytes) > node->start)
        return check_fail(walk, node, "overlaps its in-order predecessor");
    walk->previous = node;
    walk->visited++;
    return check_owner_links(walk, node);
}

/* Returns the subtree height, or -1 once an invariant is broken. */
static int check_subtree(check_walk *walk, const ks_shadow_node *node)
{
    if (node == NULL)
        return 0;
    int left = check_subtree(walk, node->left);
    if (left < 0 || check_visit(walk, node) < 0)
        return -1;
    int right = check_subtree(walk, node->right);
    if (right < 0)
        return -1;
    int height = 1 + (left > right ? left : right);
    if (node->height != height)
        return check_fail(walk, node, "has a stale height");
    if (left - right > 1 || right - left > 1)
        return check_fail(walk, node, "is out of AVL balance");
    return height;
}

NTSTATUS ks_shadow_check(const ks_shadow *map, char *why, size_t why_bytes)
{
    check_walk walk = {.why = why, .why_bytes = why_bytes};
    if (check_subtree(&walk, map->root) < 0)
        return STATUS_DATA_ERROR;
    if (walk.visited != map->node_count) {
        if (why_bytes > 0)
            snprintf(why, why_bytes, "shadow map: %" PRIu64 " nodes in the tree, count says %" PRIu64,
                     walk.visited, map->node_count);
        return STATUS_DATA_ERROR;
    }
    return STATUS_SUCCESS;
}

NTSTATUS ks_shadow_owner_check(const ks_shadow *map, const ks_shadow_owner *owner, char *why, size_t why_bytes)
{
    uint64_t listed = 0;
    for (const ks_shadow_node *node = owner->first; node != NULL; node = node->owner_next) {
        listed++;
        if (node->owner != owner || ks_shadow_find(map, node->start) != node) {
            if (why_bytes > 0)
                snprintf(why, why_bytes, "instance %u: listed frame 0x%" PRIxPTR " is %s", owner->number,
                         node->start, node->owner != owner ? "another owner's" : "not in the shadow map");
            return STATUS_DATA_ERROR;
        }
        if (listed > map->node_count)
            break; /* a cycle: stop and report the count */
    }
    if (listed != owner->live) {
        if (why_bytes > 0)
            snprintf(why, why_bytes, "instance %u: %" PRIu64 " frames listed, live count says %" PRIu64,
                     owner->number, listed, owner->live);
        return STATUS_DATA_ERROR;
    }
    return STATUS_SUCCESS;
}

#if defined(__clang__)
#pragma clang attribute pop
#endif
