/*
 * hostile_plugin.c -- a plugin that does, on purpose, what a broken allocator can do to the
 * process that runs it, for the isolation tests (tests/test_isolation.c). It is an ordinary
 * free-list pool until the callback and call named by the environment:
 *
 *   KS_HOSTILE=<what>-<callback>   what: segv, abort, trap, fpe, exit0, exit7, hang, garbage,
 *                                  rss, nullctx; callback: load, init, allocate, free, delete
 *   KS_HOSTILE_AT=N                the Nth call of that callback misbehaves (default 1)
 *
 * segv writes through a wild pointer; abort calls abort(); trap executes ud2 (SIGILL); fpe
 * divides by zero (SIGFPE); exit0/exit7 call exit(0)/_exit(7); hang sleeps forever; garbage
 * (allocate only) returns a pointer into an unmapped page; rss touches memory without end;
 * nullctx (init only) returns STATUS_SUCCESS with *Context left NULL. "load" runs in the
 * library's constructor, before ksalloc has the entry.
 */
#define _GNU_SOURCE /* MAP_ANONYMOUS: plugins build as plain C11 */
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ksalloc.h"

typedef struct hostile_pool {
    unsigned char *block;
    size_t stride_bytes;
    ULONG frames;
    ULONG next_unused;
    void **free_list;
    ULONG free_count;
} hostile_pool;

static unsigned long calls[5]; /* load, init, allocate, free, delete */

/* True when this call of `callback` is the one KS_HOSTILE names for `what`. */
static int hostile_now(const char *callback, unsigned index, const char *what)
{
    const char *spec = getenv("KS_HOSTILE");
    if (spec == NULL)
        return 0;
    const char *dash = strchr(spec, '-');
    if (dash == NULL || strcmp(dash + 1, callback) != 0 || strncmp(spec, what, (size_t)(dash - spec)) != 0 ||
        strlen(what) != (size_t)(dash - spec))
        return 0;
    const char *at = getenv("KS_HOSTILE_AT");
    unsigned long wanted = at ? strtoul(at, NULL, 10) : 1;
    return calls[index] == wanted;
}

/* The process-ending behaviours, shared by every callback. */
static void misbehave(const char *callback, unsigned index)
{
    calls[index]++;
    if (hostile_now(callback, index, "segv"))
        *(volatile int *)(uintptr_t)16 = 1;
    if (hostile_now(callback, index, "abort"))
        abort();
    if (hostile_now(callback, index, "trap"))
        __builtin_trap();
    if (hostile_now(callback, index, "fpe"))
        raise(SIGFPE);
    if (hostile_now(callback, index, "exit0"))
        exit(0);
    if (hostile_now(callback, index, "exit7"))
        _exit(7);
    if (hostile_now(callback, index, "hang"))
        for (;;)
            pause();
    if (hostile_now(callback, index, "rss"))
        for (;;) {
            char *chunk = malloc((size_t)64 << 20);
            if (chunk != NULL)
                memset(chunk, 1, (size_t)64 << 20);
        }
}

__attribute__((constructor)) static void hostile_load(void)
{
    misbehave("load", 0);
}

static NTSTATUS hostile_init(PVOID pin, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)pin;
    misbehave("init", 1);
    if (!ks_framing_align_valid(framing))
        return STATUS_INVALID_PARAMETER;
    if (framing->Frames == 0)
        framing->Frames = 64;
    if (framing->FrameSize == 0)
        framing->FrameSize = 4096;
    hostile_pool *pool = calloc(1, sizeof *pool);
    if (pool == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    size_t align_bytes = ks_framing_align_bytes(framing);
    if (align_bytes < sizeof(void *))
        align_bytes = sizeof(void *);
    pool->stride_bytes = (framing->FrameSize + align_bytes - 1) / align_bytes * align_bytes;
    pool->frames = framing->Frames;
    pool->block = aligned_alloc(align_bytes, pool->stride_bytes * pool->frames);
    pool->free_list = calloc(pool->frames, sizeof *pool->free_list);
    if (pool->block == NULL || pool->free_list == NULL) {
        free(pool->block);
        free(pool->free_list);
        free(pool);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    if (hostile_now("init", 1, "nullctx")) {
        free(pool->block); /* nothing is kept: the caller is told success and given no context */
        free(pool->free_list);
        free(pool);
        return STATUS_SUCCESS;
    }
    *context = pool;
    return STATUS_SUCCESS;
}

static void hostile_delete(PVOID context)
{
    misbehave("delete", 4);
    hostile_pool *pool = context;
    free(pool->block);
    free(pool->free_list);
    free(pool);
}

/* An address in a page mapped and then unmapped: nothing is there. */
static void *unmapped_address(void)
{
    long page_bytes = sysconf(_SC_PAGESIZE);
    void *page = mmap(NULL, (size_t)page_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED)
        return (void *)(uintptr_t)4096;
    munmap(page, (size_t)page_bytes);
    return page;
}

static PVOID hostile_allocate(PVOID context)
{
    misbehave("allocate", 2);
    if (hostile_now("allocate", 2, "garbage"))
        return unmapped_address();
    hostile_pool *pool = context;
    if (pool->free_count > 0)
        return pool->free_list[--pool->free_count];
    if (pool->next_unused < pool->frames)
        return pool->block + pool->stride_bytes * pool->next_unused++;
    return NULL;
}

static void hostile_free(PVOID context, PVOID frame)
{
    misbehave("free", 3);
    hostile_pool *pool = context;
    if (pool->free_count < pool->frames)
        pool->free_list[pool->free_count++] = frame;
}

static const KSALLOCATOR_DISPATCH hostile_dispatch = {hostile_init, hostile_delete, hostile_allocate, hostile_free};

static const ks_allocator_entry hostile_entry = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "hostile",
    .description = "broken on purpose, as KS_HOSTILE says: crashes, exits, hangs, lies",
    .caps = KS_CAP_BOUNDED,
    .dispatch = &hostile_dispatch,
};

KSALLOC_PLUGIN(hostile_entry)
