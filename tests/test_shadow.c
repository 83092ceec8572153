/*
 * test_shadow.c -- the verifier's shadow map (harness/shadow.h) against a brute-force model:
 * random inserts and removes over a crowded address range, every query compared with a linear
 * scan, the tree and owner-list invariants checked after every op. Also: ks_shadow_check and
 * ks_shadow_owner_check catch each invariant broken by hand, the node pool stops calling malloc
 * in a steady state, a failed pool growth leaves the map as it was, and intervals that would
 * wrap past the top of the address space are clipped.
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdint.h>
#include <string.h>

#include "shadow.h"

#define MODEL_MAX 1024u

typedef struct model_interval {
    uintptr_t start;
    size_t length_bytes;
    unsigned owner;
    uint64_t serial;
} model_interval;

typedef struct model {
    model_interval items[MODEL_MAX];
    size_t count;
} model;

static uint64_t test_rng(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uintptr_t model_end(const model_interval *item)
{
    return item->start + item->length_bytes;
}

/* The lowest model interval overlapping [start, start + length), or NULL. */
static const model_interval *model_first_overlap(const model *m, uintptr_t start, size_t length_bytes)
{
    const model_interval *best = NULL;
    for (size_t i = 0; i < m->count; i++) {
        const model_interval *item = &m->items[i];
        if (item->start < start + length_bytes && start < model_end(item) && (best == NULL || item->start < best->start))
            best = item;
    }
    return best;
}

static const model_interval *model_at_or_below(const model *m, uintptr_t address)
{
    const model_interval *best = NULL;
    for (size_t i = 0; i < m->count; i++)
        if (m->items[i].start <= address && (best == NULL || m->items[i].start > best->start))
            best = &m->items[i];
    return best;
}

static const model_interval *model_above(const model *m, uintptr_t address)
{
    const model_interval *best = NULL;
    for (size_t i = 0; i < m->count; i++)
        if (m->items[i].start > address && (best == NULL || m->items[i].start < best->start))
            best = &m->items[i];
    return best;
}

static void expect_same(const ks_shadow_node *node, const model_interval *item, const char *query, uintptr_t address)
{
    if (item == NULL) {
        cr_assert_null(node, "%s(0x%" PRIxPTR "): shadow found 0x%" PRIxPTR ", model none", query, address,
                       node ? node->start : 0);
        return;
    }
    cr_assert_not_null(node, "%s(0x%" PRIxPTR "): shadow none, model 0x%" PRIxPTR, query, address, item->start);
    cr_assert_eq(node->start, item->start, "%s(0x%" PRIxPTR ")", query, address);
    cr_assert_eq(node->length_bytes, item->length_bytes, "%s(0x%" PRIxPTR ")", query, address);
    cr_assert_eq(node->serial, item->serial, "%s(0x%" PRIxPTR ")", query, address);
}

static void expect_invariants(const ks_shadow *map, ks_shadow_owner *owners, size_t owner_count, const model *m)
{
    char why[256] = "";
    cr_assert_eq(ks_shadow_check(map, why, sizeof why), STATUS_SUCCESS, "%s", why);
    cr_assert_eq(ks_shadow_count(map), m->count);
    uint64_t listed = 0;
    for (size_t i = 0; i < owner_count; i++) {
        cr_assert_eq(ks_shadow_owner_check(map, &owners[i], why, sizeof why), STATUS_SUCCESS, "%s", why);
        listed += owners[i].live;
    }
    cr_assert_eq(listed, m->count);
}

static void random_queries(const ks_shadow *map, const model *m, uint64_t *rng, uintptr_t base, size_t span)
{
    for (int q = 0; q < 4; q++) {
        uintptr_t address = base + test_rng(rng) % span;
        size_t length_bytes = 1 + test_rng(rng) % 96;
        expect_same(ks_shadow_at_or_below(map, address), model_at_or_below(m, address), "at_or_below", address);
        expect_same(ks_shadow_above(map, address), model_above(m, address), "above", address);
        expect_same(ks_shadow_first_overlap(map, address, length_bytes), model_first_overlap(m, address, length_bytes),
                    "first_overlap", address);
        expect_same(ks_shadow_containing(map, address), model_first_overlap(m, address, 1), "containing", address);
        const model_interval *exact = model_at_or_below(m, address);
        expect_same(ks_shadow_find(map, address), exact && exact->start == address ? exact : NULL, "find", address);
    }
}

static void model_insert_step(ks_shadow *map, ks_shadow_owner *owners, model *m, uint64_t *rng, uintptr_t base,
                              size_t span, uint64_t serial)
{
    if (m->count == MODEL_MAX)
        return;
    uintptr_t start = base + test_rng(rng) % span;
    size_t length_bytes = 1 + test_rng(rng) % 64;
    unsigned owner = (unsigned)(test_rng(rng) % 3);
    const model_interval *clash = model_first_overlap(m, start, length_bytes);
    ks_shadow_node *node = NULL;
    NTSTATUS status = ks_shadow_insert(map, &owners[owner], start, length_bytes, serial, &node);
    if (clash != NULL) {
        cr_assert_eq(status, STATUS_INVALID_PARAMETER, "overlapping insert at 0x%" PRIxPTR " accepted", start);
        expect_same(node, clash, "insert clash", start);
        return;
    }
    cr_assert_eq(status, STATUS_SUCCESS, "disjoint insert at 0x%" PRIxPTR " refused", start);
    cr_assert_eq(node->owner, &owners[owner]);
    cr_assert_eq(node->generation, 0);
    m->items[m->count++] = (model_interval){start, length_bytes, owner, serial};
}

static void model_remove_step(ks_shadow *map, model *m, uint64_t *rng)
{
    size_t victim = (size_t)(test_rng(rng) % m->count);
    ks_shadow_node *node = ks_shadow_find(map, m->items[victim].start);
    cr_assert_not_null(node, "live interval 0x%" PRIxPTR " missing", m->items[victim].start);
    ks_shadow_remove(map, node);
    m->items[victim] = m->items[--m->count];
}

Test(shadow, random_ops_match_a_brute_force_model)
{
    static model m;
    ks_shadow *map = NULL;
    cr_assert_eq(ks_shadow_create(&map, NULL), STATUS_SUCCESS);
    ks_shadow_owner owners[3];
    for (unsigned i = 0; i < 3; i++)
        ks_shadow_owner_init(&owners[i], i, NULL);
    uint64_t rng = 42;
    const uintptr_t base = 0x10000;
    const size_t span = 16384; /* crowded: about half the inserts clash */
    size_t peak_count = 0;
    for (uint64_t op = 0; op < 20000; op++) {
        /* Phases that grow then shrink the map, so both rebalancing paths run at many sizes. */
        unsigned insert_percent = (op / 2500) % 2 == 1 ? 70 : 35; /* ends growing */
        if (m.count == 0 || test_rng(&rng) % 100 < insert_percent)
            model_insert_step(map, owners, &m, &rng, base, span, op);
        else
            model_remove_step(map, &m, &rng);
        random_queries(map, &m, &rng, base - 64, span + 128);
        expect_invariants(map, owners, 3, &m);
        peak_count = m.count > peak_count ? m.count : peak_count;
    }
    cr_assert_gt(peak_count, 150, "the map should have grown large (peak %zu)", peak_count);
    cr_assert_gt(m.count, 50, "the model should hold many intervals at the end (%zu)", m.count);
    ks_shadow_destroy(map);
}

Test(shadow, monotonic_inserts_and_removes_stay_balanced)
{
    ks_shadow *map = NULL;
    cr_assert_eq(ks_shadow_create(&map, NULL), STATUS_SUCCESS);
    ks_shadow_owner owner;
    ks_shadow_owner_init(&owner, 0, NULL);
    char why[256] = "";
    const uint64_t count = 1u << 15;
    for (uint64_t i = 0; i < count; i++) {
        ks_shadow_node *node = NULL;
        cr_assert_eq(ks_shadow_insert(map, &owner, 0x100000 + 64 * (uintptr_t)i, 64, i, &node), STATUS_SUCCESS);
    }
    cr_assert_eq(ks_shadow_check(map, why, sizeof why), STATUS_SUCCESS, "%s", why);
    /* Removing from the low end keeps hitting the same rotation path. */
    for (uint64_t i = 0; i < count; i++) {
        ks_shadow_remove(map, owner.first);
        if (i % 4096 == 0)
            cr_assert_eq(ks_shadow_check(map, why, sizeof why), STATUS_SUCCESS, "after %" PRIu64 " removes: %s", i, why);
    }
    cr_assert_eq(ks_shadow_count(map), 0);
    cr_assert_eq(owner.live, 0);
    cr_assert_null(owner.first);
    ks_shadow_destroy(map);
}

/* Builds a map of 100 disjoint intervals of owner, 32 bytes every 64 bytes from 0x1000. */
static ks_shadow *hundred_intervals(ks_shadow_owner *owner)
{
    ks_shadow *map = NULL;
    cr_assert_eq(ks_shadow_create(&map, NULL), STATUS_SUCCESS);
    ks_shadow_owner_init(owner, 7, NULL);
    for (uintptr_t i = 0; i < 100; i++) {
        ks_shadow_node *node = NULL;
        cr_assert_eq(ks_shadow_insert(map, owner, 0x1000 + 64 * i, 32, i, &node), STATUS_SUCCESS);
    }
    return map;
}

static int avl_left_height(const ks_shadow_node *node)
{
    return node->left ? node->left->height : 0;
}

static void expect_check_fails(const ks_shadow *map, const char *phrase)
{
    char why[256] = "";
    cr_assert_eq(ks_shadow_check(map, why, sizeof why), STATUS_DATA_ERROR, "broken tree passed the check");
    cr_assert_not_null(strstr(why, phrase), "expected '%s' in: %s", phrase, why);
}

Test(shadow, check_catches_each_broken_invariant)
{
    ks_shadow_owner owner;
    ks_shadow *map = hundred_intervals(&owner);
    char why[256] = "";
    cr_assert_eq(ks_shadow_check(map, why, sizeof why), STATUS_SUCCESS, "%s", why);
    ks_shadow_node *node = ks_shadow_find(map, 0x1000 + 64 * 50);
    cr_assert_not_null(node);

    node->height += 1;
    expect_check_fails(map, "stale height");
    node->height -= 1;

    node->length_bytes = 65; /* now reaches into its successor */
    expect_check_fails(map, "overlaps its in-order predecessor");
    node->length_bytes = 32;

    uintptr_t start = node->start;
    node->start = 0x1000 + 64 * 70; /* a key in the wrong subtree */
    expect_check_fails(map, "out of order");
    node->start = start;

    ks_shadow_node *next = node->owner_next;
    node->owner_next = NULL;
    expect_check_fails(map, "owner-list link");
    node->owner_next = next;

    node->length_bytes = 0;
    expect_check_fails(map, "length 0");
    node->length_bytes = 32;

    cr_assert_eq(ks_shadow_check(map, why, sizeof why), STATUS_SUCCESS, "restored tree: %s", why);
    owner.live++;
    cr_assert_eq(ks_shadow_owner_check(map, &owner, why, sizeof why), STATUS_DATA_ERROR);
    cr_assert_not_null(strstr(why, "live count says 101"), "%s", why);
    owner.live--;
    ks_shadow_destroy(map);
}

Test(shadow, check_catches_imbalance)
{
    ks_shadow_owner owner;
    ks_shadow *map = hundred_intervals(&owner);
    /* Hang a right-leaning chain of three nodes under the rightmost node, with heights, order,
     * disjointness and owner links all consistent: only the balance is wrong. */
    ks_shadow_node *last = ks_shadow_at_or_below(map, UINTPTR_MAX);
    cr_assert_null(last->right);
    cr_assert_leq(avl_left_height(last), 1);
    ks_shadow_node extra[3];
    ks_shadow_owner extra_owners[3];
    memset(extra, 0, sizeof extra);
    for (int i = 0; i < 3; i++) {
        ks_shadow_owner_init(&extra_owners[i], 100 + (unsigned)i, NULL);
        extra_owners[i].first = extra_owners[i].last = &extra[i];
        extra_owners[i].live = 1;
        extra[i].start = last->start + 64 * (uintptr_t)(i + 1);
        extra[i].length_bytes = 32;
        extra[i].owner = &extra_owners[i];
        extra[i].height = 3 - i;
        extra[i].right = i < 2 ? &extra[i + 1] : NULL;
    }
    int saved_height = last->height;
    last->right = &extra[0];
    last->height = 4;
    expect_check_fails(map, "out of AVL balance");
    last->right = NULL;
    last->height = saved_height;
    char why[256] = "";
    cr_assert_eq(ks_shadow_check(map, why, sizeof why), STATUS_SUCCESS, "restored tree: %s", why);
    ks_shadow_destroy(map);
}

Test(shadow, release_owner_removes_only_that_owners_frames)
{
    ks_shadow *map = NULL;
    cr_assert_eq(ks_shadow_create(&map, NULL), STATUS_SUCCESS);
    ks_shadow_owner a, b;
    ks_shadow_owner_init(&a, 0, NULL);
    ks_shadow_owner_init(&b, 1, NULL);
    for (uintptr_t i = 0; i < 300; i++) {
        ks_shadow_node *node = NULL;
        cr_assert_eq(ks_shadow_insert(map, i % 3 == 0 ? &b : &a, 0x4000 + 16 * i, 16, i, &node), STATUS_SUCCESS);
    }
    cr_assert_eq(a.live, 200);
    cr_assert_eq(b.live, 100);
    /* The owner list is in insertion order. */
    cr_assert_eq(b.first->start, 0x4000);
    cr_assert_eq(b.last->start, 0x4000 + 16 * 297);
    ks_shadow_release_owner(map, &a);
    char why[256] = "";
    cr_assert_eq(ks_shadow_check(map, why, sizeof why), STATUS_SUCCESS, "%s", why);
    cr_assert_eq(ks_shadow_owner_check(map, &b, why, sizeof why), STATUS_SUCCESS, "%s", why);
    cr_assert_eq(a.live, 0);
    cr_assert_eq(ks_shadow_count(map), 100);
    cr_assert_null(ks_shadow_find(map, 0x4000 + 16));
    cr_assert_not_null(ks_shadow_find(map, 0x4000 + 48));
    ks_shadow_destroy(map);
}

Test(shadow, steady_state_makes_no_malloc)
{
    ks_shadow *map = NULL;
    cr_assert_eq(ks_shadow_create(&map, NULL), STATUS_SUCCESS);
    ks_shadow_owner owner;
    ks_shadow_owner_init(&owner, 0, NULL);
    uint64_t rng = 7;
    const size_t live_target = 1000;
    uintptr_t cursor = 0x100000;
    for (int round = 0; round < 2; round++) {
        size_t slabs_before = ks_shadow_slab_count(map);
        for (int op = 0; op < 50000; op++) {
            if (owner.live < live_target) {
                ks_shadow_node *node = NULL;
                cr_assert_eq(ks_shadow_insert(map, &owner, cursor, 48, (uint64_t)op, &node), STATUS_SUCCESS);
                cursor += 64;
            } else {
                ks_shadow_node *victim = owner.first;
                for (uint64_t skip = test_rng(&rng) % 8; skip > 0 && victim->owner_next; skip--)
                    victim = victim->owner_next;
                ks_shadow_remove(map, victim);
            }
        }
        if (round == 1)
            cr_assert_eq(ks_shadow_slab_count(map), slabs_before, "the pool grew in a steady state");
        else
            cr_assert_gt(ks_shadow_slab_count(map), 1, "warm-up should have grown the pool");
    }
    ks_shadow_destroy(map);
}

Test(shadow, failed_growth_leaves_the_map_unchanged)
{
    ks_shadow *map = NULL;
    cr_assert_eq(ks_shadow_create(&map, NULL), STATUS_SUCCESS);
    ks_shadow_owner owner;
    ks_shadow_owner_init(&owner, 0, NULL);
    ks_shadow_inject_growth_failure(1); /* the first slab only */
    ks_shadow_node *node = NULL;
    uintptr_t address = 0x1000;
    NTSTATUS status = STATUS_SUCCESS;
    for (int attempt = 0; attempt < 4096 && NT_SUCCESS(status); attempt++) {
        status = ks_shadow_insert(map, &owner, address, 8, address, &node);
        address += 8;
    }
    cr_assert_eq(status, STATUS_INSUFFICIENT_RESOURCES);
    cr_assert_null(node);
    uint64_t held = ks_shadow_count(map);
    cr_assert_gt(held, 0);
    cr_assert_eq(owner.live, held);
    char why[256] = "";
    cr_assert_eq(ks_shadow_check(map, why, sizeof why), STATUS_SUCCESS, "%s", why);
    cr_assert_null(ks_shadow_find(map, address - 8), "the refused interval is in the map");
    /* A freed node is reused without growth. */
    ks_shadow_remove(map, owner.first);
    cr_assert_eq(ks_shadow_insert(map, &owner, address + 64, 8, 0, &node), STATUS_SUCCESS);
    ks_shadow_inject_growth_failure(SIZE_MAX);
    cr_assert_eq(ks_shadow_insert(map, &owner, address + 128, 8, 0, &node), STATUS_SUCCESS);
    ks_shadow_destroy(map);
}

Test(shadow, insert_reports_the_clash_and_refuses_zero_length)
{
    ks_shadow *map = NULL;
    cr_assert_eq(ks_shadow_create(&map, NULL), STATUS_SUCCESS);
    ks_shadow_owner owner;
    ks_shadow_owner_init(&owner, 0, NULL);
    ks_shadow_node *node = NULL, *first = NULL, *second = NULL;
    cr_assert_eq(ks_shadow_insert(map, &owner, 0x1000, 0x100, 1, &first), STATUS_SUCCESS);
    cr_assert_eq(ks_shadow_insert(map, &owner, 0x1200, 0x100, 2, &second), STATUS_SUCCESS);
    cr_assert_eq(ks_shadow_insert(map, &owner, 0x1100, 0x100, 3, &node), STATUS_SUCCESS, "touching is not overlap");
    cr_assert_eq(ks_shadow_insert(map, &owner, 0x10FF, 2, 4, &node), STATUS_INVALID_PARAMETER);
    cr_assert_eq(node, first, "the lowest overlapping interval is reported");
    cr_assert_eq(ks_shadow_insert(map, &owner, 0x0F00, 0x1000, 5, &node), STATUS_INVALID_PARAMETER);
    cr_assert_eq(node, first);
    cr_assert_eq(ks_shadow_insert(map, &owner, 0x1250, 1, 6, &node), STATUS_INVALID_PARAMETER);
    cr_assert_eq(node, second);
    cr_assert_eq(ks_shadow_insert(map, &owner, 0x2000, 0, 7, &node), STATUS_INVALID_PARAMETER);
    cr_assert_null(node);
    cr_assert_null(ks_shadow_first_overlap(map, 0x1000, 0));
    cr_assert_eq(ks_shadow_count(map), 3);
    ks_shadow_destroy(map);
}

Test(shadow, intervals_clip_at_the_top_of_the_address_space)
{
    ks_shadow *map = NULL;
    cr_assert_eq(ks_shadow_create(&map, NULL), STATUS_SUCCESS);
    ks_shadow_owner owner;
    ks_shadow_owner_init(&owner, 0, NULL);
    ks_shadow_node *node = NULL;
    uintptr_t top = UINTPTR_MAX - 15;
    cr_assert_eq(ks_shadow_insert(map, &owner, top, 4096, 1, &node), STATUS_SUCCESS);
    cr_assert_eq(node->length_bytes, 15, "clipped to end at UINTPTR_MAX");
    cr_assert_eq(ks_shadow_containing(map, UINTPTR_MAX - 1), node);
    cr_assert_eq(ks_shadow_first_overlap(map, top - 8, SIZE_MAX), node, "a query that wraps still finds it");
    cr_assert_eq(ks_shadow_insert(map, &owner, top - 4096, 4096, 2, &node), STATUS_SUCCESS);
    char why[256] = "";
    cr_assert_eq(ks_shadow_check(map, why, sizeof why), STATUS_SUCCESS, "%s", why);
    ks_shadow_destroy(map);
}
