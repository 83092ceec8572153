/*
 * catalogue.h -- every built-in allocator by name, and plugins loaded from shared objects.
 * The catalogue is how everything else (verifier, workload engine, fuzzers, benchmarks) knows an
 * allocator: by its ks_allocator_entry, never by its internals.
 */
#ifndef KS_CATALOGUE_H
#define KS_CATALOGUE_H

#include "error.h"
#include "ksalloc.h"

size_t ks_catalogue_count(void);
const ks_allocator_entry *ks_catalogue_at(size_t index);
/* NULL when no built-in allocator has that name. */
const ks_allocator_entry *ks_catalogue_find(const char *name);

/* Checks an entry as the host needs it: ABI version, struct size, a valid name, a description,
 * all four dispatch members. origin names it in the message ("plugin ./x.so", "built-in"). */
NTSTATUS ks_entry_validate(const ks_allocator_entry *entry, const char *origin, ks_error *err);

/* When framing asks more than the entry states it serves (max_frame_bytes, max_align_bytes),
 * "; FrameSize 536870912 bytes is over its limit of 268435456 bytes (ksalloc list: MAX_FRAME)"
 * into buf, else "": what an InitializeAllocator refusal leaves unsaid. Returns buf. */
const char *ks_framing_limit_hint(const ks_allocator_entry *entry, const KSALLOCATOR_FRAMING *framing, char *buf,
                                  size_t buf_bytes);

/* "thread-safe,bounded,..." for the caps bits, written into buf. Returns buf. */
const char *ks_caps_describe(ULONG caps, char *buf, size_t buf_bytes);

typedef struct ks_plugin ks_plugin;

/* dlopens path, finds KSALLOC_PLUGIN_SYMBOL, asks it for the entry and validates it. Errors name
 * the path and what was wrong (dlopen's message, missing symbol, NULL entry, ABI mismatch, NULL
 * dispatch member). */
NTSTATUS ks_plugin_load(const char *path, ks_plugin **plugin, ks_error *err);
const ks_allocator_entry *ks_plugin_entry(const ks_plugin *plugin);
void ks_plugin_unload(ks_plugin *plugin);

/* Resolves "name" against the catalogue, or "plugin:path.so" by loading it (the plugin is
 * returned in *plugin for the caller to unload; NULL for a built-in). */
NTSTATUS ks_allocator_resolve(const char *spec, const ks_allocator_entry **entry, ks_plugin **plugin,
                              ks_error *err);

#endif
