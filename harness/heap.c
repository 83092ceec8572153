/*
 * heap.c -- shared backing heaps.
 *
 * A heap is a page-aligned region plus one attachment slot. The region comes from region_map.h
 * and goes back there when the heap is destroyed, so a program creating a heap for each run (a
 * fuzz target, for each input) reuses one rather than mapping, faulting in and unmapping it each
 * time; its contents are therefore unspecified, not zero. The first allocator
 * instance of a family to attach creates the family's shared state (for a region allocator, its
 * control structure over the region; for a general-purpose allocator, an arena); later instances
 * of the same family get the same state; the last one to detach destroys it. A second family is
 * refused, because two algorithms cannot manage one region. The slot is guarded by a mutex so
 * that instances on different threads may attach and detach concurrently; the allocators' own
 * fast paths never touch it.
 */
#include "heap.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "region_map.h"

typedef struct ks_heap_private {
    pthread_mutex_t lock;
    char name[64];
    char family[KS_HEAP_FAMILY_BYTES];
    void *state;
    unsigned attach_count;
    size_t mapped_bytes;
} ks_heap_private;

static NTSTATUS heap_attach(ks_heap *heap, const char *family, ks_heap_state_create_fn create, void *create_arg,
                            void **state)
{
    ks_heap_private *priv = heap->host_private;
    if (family == NULL || family[0] == '\0' || create == NULL || state == NULL)
        return STATUS_INVALID_PARAMETER;
    if (strlen(family) >= sizeof priv->family)
        return STATUS_INVALID_PARAMETER;
    NTSTATUS status = STATUS_SUCCESS;
    pthread_mutex_lock(&priv->lock);
    if (priv->attach_count == 0) {
        void *created = NULL;
        status = create(heap, create_arg, &created);
        if (NT_SUCCESS(status)) {
            strcpy(priv->family, family);
            priv->state = created;
            priv->attach_count = 1;
            *state = created;
        }
    } else if (strcmp(priv->family, family) == 0) {
        priv->attach_count++;
        *state = priv->state;
    } else {
        status = STATUS_INVALID_PARAMETER; /* managed by another family */
    }
    pthread_mutex_unlock(&priv->lock);
    return status;
}

static void heap_detach(ks_heap *heap, const char *family, ks_heap_state_destroy_fn destroy)
{
    ks_heap_private *priv = heap->host_private;
    pthread_mutex_lock(&priv->lock);
    if (priv->attach_count > 0 && family != NULL && strcmp(priv->family, family) == 0) {
        if (--priv->attach_count == 0) {
            if (destroy != NULL)
                destroy(heap, priv->state);
            priv->state = NULL;
            priv->family[0] = '\0';
        }
    }
    pthread_mutex_unlock(&priv->lock);
}

NTSTATUS ks_heap_create(const char *name, size_t size_bytes, ks_heap **heap_out, ks_error *err)
{
    size_t page_bytes = (size_t)sysconf(_SC_PAGESIZE);
    if (size_bytes == 0)
        size_bytes = page_bytes;
    if (size_bytes > ((size_t)1 << 40))
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "heap '%s': %zu bytes is over the 1 TiB limit",
                            name ? name : "?", size_bytes);
    size_t mapped_bytes = (size_bytes + page_bytes - 1) & ~(page_bytes - 1);

    ks_heap *heap = calloc(1, sizeof *heap);
    ks_heap_private *priv = calloc(1, sizeof *priv);
    void *base = ks_region_map_aligned(mapped_bytes, page_bytes);
    if (heap == NULL || priv == NULL || base == NULL) {
        free(heap);
        free(priv);
        ks_region_unmap(base, mapped_bytes);
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "heap '%s': cannot reserve %zu bytes",
                            name ? name : "?", mapped_bytes);
    }
    pthread_mutex_init(&priv->lock, NULL);
    snprintf(priv->name, sizeof priv->name, "%s", name ? name : "heap");
    priv->mapped_bytes = mapped_bytes;
    heap->name = priv->name;
    heap->base = base;
    heap->size_bytes = mapped_bytes;
    heap->attach = heap_attach;
    heap->detach = heap_detach;
    heap->host_private = priv;
    *heap_out = heap;
    return STATUS_SUCCESS;
}

NTSTATUS ks_heap_destroy(ks_heap *heap, ks_error *err)
{
    if (heap == NULL)
        return STATUS_SUCCESS;
    ks_heap_private *priv = heap->host_private;
    pthread_mutex_lock(&priv->lock);
    unsigned attached = priv->attach_count;
    pthread_mutex_unlock(&priv->lock);
    if (attached != 0)
        return ks_error_set(err, STATUS_DEVICE_BUSY, "heap '%s' is still attached by %u instance(s) of '%s'",
                            heap->name, attached, priv->family);
    ks_region_unmap(heap->base, priv->mapped_bytes);
    pthread_mutex_destroy(&priv->lock);
    free(priv);
    free(heap);
    return STATUS_SUCCESS;
}

const char *ks_heap_family(const ks_heap *heap)
{
    const ks_heap_private *priv = heap->host_private;
    return priv->attach_count ? priv->family : NULL;
}
