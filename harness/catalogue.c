/*
 * catalogue.c -- the built-in allocators by name, and the checks every entry (built-in or
 * plugin) passes before the host uses it. Plugin loading is in plugin.c.
 *
 * Adding an allocator: define `const ks_allocator_entry ks_allocator_<name>` in
 * allocators/<name>.c, then add one extern line and one table line below. Nothing else in the
 * harness names allocators; the conformance suite (tests/test_conformance.c) covers every entry
 * of the table automatically.
 */
#include "catalogue.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

/* ---- The built-in table (one extern line and one table line per allocator) ------------------ */

/* The three peers wrap libraries the project does not build (jemalloc, mimalloc, tcmalloc, from
 * the distribution). A build that must instrument every line it runs -- MemorySanitizer's, which
 * reports false positives through uninstrumented code -- sets KS_WITH_PEER_LIBS to 0 and leaves
 * them out (fuzz/fuzz.mk's FUZZ_PEERS=0); every other build has them. */
#ifndef KS_WITH_PEER_LIBS
#define KS_WITH_PEER_LIBS 1
#endif

extern const ks_allocator_entry ks_allocator_system;
extern const ks_allocator_entry ks_allocator_lookaside;
extern const ks_allocator_entry ks_allocator_pool;
extern const ks_allocator_entry ks_allocator_buddy;
extern const ks_allocator_entry ks_allocator_tlsf;
extern const ks_allocator_entry ks_allocator_ring;
extern const ks_allocator_entry ks_allocator_magazine;
extern const ks_allocator_entry ks_allocator_lockfree;
extern const ks_allocator_entry ks_allocator_dma_common;
extern const ks_allocator_entry ks_allocator_dma_sg;
extern const ks_allocator_entry ks_allocator_dma_pool;
#if KS_WITH_PEER_LIBS
extern const ks_allocator_entry ks_allocator_jemalloc;
extern const ks_allocator_entry ks_allocator_mimalloc;
extern const ks_allocator_entry ks_allocator_tcmalloc;
#endif

static const ks_allocator_entry *const builtin_entries[] = {
    &ks_allocator_system,
#if KS_WITH_PEER_LIBS
    &ks_allocator_jemalloc,
#endif
    &ks_allocator_lookaside,
    &ks_allocator_pool,
#if KS_WITH_PEER_LIBS
    &ks_allocator_mimalloc,
    &ks_allocator_tcmalloc,
#endif
    &ks_allocator_buddy,
    &ks_allocator_tlsf,
    &ks_allocator_ring,
    &ks_allocator_magazine,
    &ks_allocator_lockfree,
    &ks_allocator_dma_common,
    &ks_allocator_dma_sg,
    &ks_allocator_dma_pool,
};

#define BUILTIN_COUNT (sizeof builtin_entries / sizeof builtin_entries[0])

size_t ks_catalogue_count(void)
{
    return BUILTIN_COUNT;
}

const ks_allocator_entry *ks_catalogue_at(size_t index)
{
    return index < BUILTIN_COUNT ? builtin_entries[index] : NULL;
}

const ks_allocator_entry *ks_catalogue_find(const char *name)
{
    if (name == NULL)
        return NULL;
    for (size_t index = 0; index < BUILTIN_COUNT; index++)
        if (strcmp(builtin_entries[index]->name, name) == 0)
            return builtin_entries[index];
    return NULL;
}

/* ---- Entry validation ------------------------------------------------------------------------ */

#define ENTRY_NAME_MAX_BYTES 63u

/* The smallest entry the host can use: everything up to and including the dispatch pointer.
 * Later members (self_check, counters, bare) are optional and read only when struct_bytes covers them. */
#define ENTRY_MIN_BYTES (offsetof(ks_allocator_entry, dispatch) + sizeof(((ks_allocator_entry *)0)->dispatch))

_Static_assert(ENTRY_MIN_BYTES <= sizeof(ks_allocator_entry), "the minimum entry is a prefix of the entry");

static int name_char_valid(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

/* NULL when the name matches [A-Za-z0-9_-]{1,63}, else what is wrong with it. */
static const char *name_problem(const char *name, char *detail, size_t detail_bytes)
{
    if (name == NULL)
        return "name is NULL";
    size_t length = strnlen(name, ENTRY_NAME_MAX_BYTES + 1);
    if (length == 0)
        return "name is empty";
    if (length > ENTRY_NAME_MAX_BYTES) {
        snprintf(detail, detail_bytes, "name is longer than %u characters", ENTRY_NAME_MAX_BYTES);
        return detail;
    }
    for (size_t index = 0; index < length; index++) {
        if (!name_char_valid(name[index])) {
            snprintf(detail, detail_bytes, "name '%s' has character 0x%02X at offset %zu; allowed: [A-Za-z0-9_-]",
                     name, (unsigned)(unsigned char)name[index], index);
            return detail;
        }
    }
    return NULL;
}

static NTSTATUS validate_dispatch(const ks_allocator_entry *entry, const char *origin, ks_error *err)
{
    const KSALLOCATOR_DISPATCH *dispatch = entry->dispatch;
    if (dispatch == NULL)
        return ks_error_set(err, STATUS_INVALID_IMAGE_FORMAT, "%s: allocator '%s': dispatch is NULL", origin,
                            entry->name);
    const struct {
        const char *member;
        int present;
    } members[] = {
        {"InitializeAllocator", dispatch->InitializeAllocator != NULL},
        {"DeleteAllocator", dispatch->DeleteAllocator != NULL},
        {"Allocate", dispatch->Allocate != NULL},
        {"Free", dispatch->Free != NULL},
    };
    for (size_t index = 0; index < sizeof members / sizeof members[0]; index++)
        if (!members[index].present)
            return ks_error_set(err, STATUS_INVALID_IMAGE_FORMAT, "%s: allocator '%s': dispatch->%s is NULL",
                                origin, entry->name, members[index].member);
    return STATUS_SUCCESS;
}

/* The optional bare hook, read only when struct_bytes covers it (an older entry has none). */
static NTSTATUS validate_bare(const ks_allocator_entry *entry, const char *origin, ks_error *err)
{
    if (entry->struct_bytes < offsetof(ks_allocator_entry, bare) + sizeof entry->bare || entry->bare == NULL)
        return STATUS_SUCCESS;
    if (entry->bare->allocate == NULL || entry->bare->free == NULL)
        return ks_error_set(err, STATUS_INVALID_IMAGE_FORMAT, "%s: allocator '%s': bare->%s is NULL", origin,
                            entry->name, entry->bare->allocate == NULL ? "allocate" : "free");
    return STATUS_SUCCESS;
}

NTSTATUS ks_entry_validate(const ks_allocator_entry *entry, const char *origin, ks_error *err)
{
    if (origin == NULL)
        origin = "allocator entry";
    if (entry == NULL)
        return ks_error_set(err, STATUS_INVALID_IMAGE_FORMAT, "%s: entry is NULL", origin);
    if (entry->abi_version != KSALLOC_ABI_VERSION)
        return ks_error_set(err, STATUS_REVISION_MISMATCH,
                            "%s: abi_version is %u, this host speaks ABI %u (rebuild against this ksalloc.h)", origin,
                            (unsigned)entry->abi_version, KSALLOC_ABI_VERSION);
    if (entry->struct_bytes < ENTRY_MIN_BYTES)
        return ks_error_set(err, STATUS_REVISION_MISMATCH,
                            "%s: struct_bytes is %u, smaller than the %zu bytes up to and including 'dispatch'",
                            origin, (unsigned)entry->struct_bytes, (size_t)ENTRY_MIN_BYTES);
    char detail[160];
    const char *problem = name_problem(entry->name, detail, sizeof detail);
    if (problem != NULL)
        return ks_error_set(err, STATUS_INVALID_IMAGE_FORMAT, "%s: %s", origin, problem);
    if (entry->description == NULL || entry->description[0] == '\0')
        return ks_error_set(err, STATUS_INVALID_IMAGE_FORMAT, "%s: allocator '%s': description is %s", origin,
                            entry->name, entry->description == NULL ? "NULL" : "empty");
    NTSTATUS status = validate_dispatch(entry, origin, err);
    if (!NT_SUCCESS(status))
        return status;
    return validate_bare(entry, origin, err);
}

/* ---- Capabilities ----------------------------------------------------------------------------- */

const char *ks_framing_limit_hint(const ks_allocator_entry *entry, const KSALLOCATOR_FRAMING *framing, char *buf,
                                  size_t buf_bytes)
{
    buf[0] = '\0';
    uint64_t align_bytes = (uint64_t)framing->FileAlignment + 1u;
    if (entry->max_frame_bytes != 0 && framing->FrameSize > entry->max_frame_bytes)
        snprintf(buf, buf_bytes, "; FrameSize %u bytes is over its limit of %zu bytes (ksalloc list: MAX_FRAME)",
                 (unsigned)framing->FrameSize, entry->max_frame_bytes);
    else if (entry->max_align_bytes != 0 && align_bytes > entry->max_align_bytes)
        snprintf(buf, buf_bytes, "; an alignment of %llu bytes is over its limit of %zu bytes (ksalloc list: MAX_ALIGN)",
                 (unsigned long long)align_bytes, entry->max_align_bytes);
    return buf;
}

const char *ks_caps_describe(ULONG caps, char *buf, size_t buf_bytes)
{
    static const struct {
        ULONG bit;
        const char *name;
    } names[] = {
        {KS_CAP_THREAD_SAFE, "thread-safe"},
        {KS_CAP_BOUNDED, "bounded"},
        {KS_CAP_GUARANTEED, "guaranteed"},
        {KS_CAP_SHARED_HEAP, "shared-heap"},
        {KS_CAP_DMA, "dma"},
        {KS_CAP_ANY_SIZE, "any-size"},
    };
    if (buf == NULL || buf_bytes == 0)
        return buf;
    buf[0] = '\0';
    size_t used = 0;
    ULONG unknown = caps;
    for (size_t index = 0; index < sizeof names / sizeof names[0]; index++) {
        if (!(caps & names[index].bit))
            continue;
        unknown &= ~names[index].bit;
        int written = snprintf(buf + used, buf_bytes - used, "%s%s", used ? "," : "", names[index].name);
        used += written > 0 ? (size_t)written : 0;
        if (used >= buf_bytes)
            return buf; /* truncated, still terminated */
    }
    if (unknown != 0)
        used += (size_t)snprintf(buf + used, buf_bytes - used, "%s0x%X", used ? "," : "", (unsigned)unknown);
    if (used == 0)
        snprintf(buf, buf_bytes, "none");
    return buf;
}
