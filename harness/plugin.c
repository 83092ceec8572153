/*
 * plugin.c -- allocators loaded from shared objects, and name resolution ("pool",
 * "plugin:./x.so").
 *
 * A plugin is dlopen'ed RTLD_NOW (an unresolved symbol fails the load here, not in the middle of
 * a run) and RTLD_LOCAL (two plugins may define the same static names, and none of them leaks
 * symbols into the next). The host asks the plugin's entry function for its entry, validates
 * it, and keeps a copy of it sized to this host's ks_allocator_entry: members past the plugin's
 * struct_bytes (an older plugin built before they existed) read as zero, so the rest of the
 * harness may read every member of the entry it is given. The strings and the dispatch table
 * stay in the plugin, valid until ks_plugin_unload.
 */
#include "catalogue.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct ks_plugin {
    void *handle;
    ks_allocator_entry entry; /* the host-sized copy */
};

#define PLUGIN_PREFIX "plugin:"

/* dlopen searches the library path for a name without a slash; a user naming a file means the
 * file, so such a name is taken relative to the working directory. */
static void *plugin_open(const char *path, char *error, size_t error_bytes)
{
    char local_path[4096];
    const char *open_path = path;
    if (strchr(path, '/') == NULL) {
        if ((size_t)snprintf(local_path, sizeof local_path, "./%s", path) >= sizeof local_path) {
            snprintf(error, error_bytes, "path is too long");
            return NULL;
        }
        open_path = local_path;
    }
    dlerror(); /* clear any stale message */
    void *handle = dlopen(open_path, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        const char *why = dlerror();
        snprintf(error, error_bytes, "%s", why != NULL ? why : "dlopen failed without a message");
    }
    return handle;
}

/* A file that does not exist is OBJECT_NAME_NOT_FOUND; one that exists but does not load is an
 * invalid image (not a shared object, wrong architecture, unresolved symbols). */
static NTSTATUS plugin_open_status(const char *path)
{
    struct stat info;
    if (stat(path, &info) != 0 && (errno == ENOENT || errno == ENOTDIR))
        return STATUS_OBJECT_NAME_NOT_FOUND;
    return STATUS_INVALID_IMAGE_FORMAT;
}

static NTSTATUS plugin_find_entry(void *handle, const char *path, const ks_allocator_entry **entry, ks_error *err)
{
    dlerror();
    void *symbol = dlsym(handle, KSALLOC_PLUGIN_SYMBOL);
    if (symbol == NULL)
        return ks_error_set(err, STATUS_ENTRYPOINT_NOT_FOUND,
                            "plugin '%s': no symbol '%s' (export the entry with KSALLOC_PLUGIN(entry))", path,
                            KSALLOC_PLUGIN_SYMBOL);
    /* ISO C has no conversion from an object pointer to a function pointer; POSIX guarantees the
     * representation is the same, and memcpy says so without a cast. */
    ks_plugin_entry_fn entry_fn;
    _Static_assert(sizeof entry_fn == sizeof symbol, "dlsym's result fits a function pointer");
    memcpy(&entry_fn, &symbol, sizeof entry_fn);
    *entry = entry_fn(KSALLOC_ABI_VERSION);
    if (*entry == NULL)
        return ks_error_set(err, STATUS_INVALID_IMAGE_FORMAT, "plugin '%s': %s(%u) returned NULL", path,
                            KSALLOC_PLUGIN_SYMBOL, KSALLOC_ABI_VERSION);
    return STATUS_SUCCESS;
}

NTSTATUS ks_plugin_load(const char *path, ks_plugin **plugin_out, ks_error *err)
{
    if (plugin_out != NULL)
        *plugin_out = NULL;
    if (path == NULL || path[0] == '\0' || plugin_out == NULL)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "plugin: %s", path == NULL || path[0] == '\0'
                                                                             ? "no path given"
                                                                             : "nowhere to return the plugin");
    char why[1024];
    void *handle = plugin_open(path, why, sizeof why);
    if (handle == NULL)
        return ks_error_set(err, plugin_open_status(path), "plugin '%s': cannot load: %s", path, why);

    const ks_allocator_entry *entry = NULL;
    NTSTATUS status = plugin_find_entry(handle, path, &entry, err);
    char origin[600];
    snprintf(origin, sizeof origin, "plugin '%s'", path);
    if (NT_SUCCESS(status))
        status = ks_entry_validate(entry, origin, err);
    ks_plugin *plugin = NT_SUCCESS(status) ? calloc(1, sizeof *plugin) : NULL;
    if (NT_SUCCESS(status) && plugin == NULL)
        status = ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "plugin '%s': out of memory", path);
    if (!NT_SUCCESS(status)) {
        dlclose(handle);
        return status;
    }
    size_t copy_bytes = entry->struct_bytes < sizeof plugin->entry ? entry->struct_bytes : sizeof plugin->entry;
    memcpy(&plugin->entry, entry, copy_bytes); /* the rest stays zero from calloc */
    plugin->entry.struct_bytes = (ULONG)sizeof plugin->entry;
    plugin->handle = handle;
    *plugin_out = plugin;
    return STATUS_SUCCESS;
}

const ks_allocator_entry *ks_plugin_entry(const ks_plugin *plugin)
{
    return plugin != NULL ? &plugin->entry : NULL;
}

void ks_plugin_unload(ks_plugin *plugin)
{
    if (plugin == NULL)
        return;
    dlclose(plugin->handle);
    free(plugin);
}

/* "system, jemalloc, ..." into buf, for the unknown-name message. */
static const char *known_names(char *buf, size_t buf_bytes)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t index = 0; index < ks_catalogue_count() && used < buf_bytes; index++) {
        int written = snprintf(buf + used, buf_bytes - used, "%s%s", index ? ", " : "", ks_catalogue_at(index)->name);
        used += written > 0 ? (size_t)written : 0;
    }
    return buf;
}

NTSTATUS ks_allocator_resolve(const char *spec, const ks_allocator_entry **entry, ks_plugin **plugin, ks_error *err)
{
    if (entry != NULL)
        *entry = NULL;
    if (plugin != NULL)
        *plugin = NULL;
    if (spec == NULL || entry == NULL || plugin == NULL)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "allocator: %s",
                            spec == NULL ? "no name given" : "nowhere to return the entry");
    if (strncmp(spec, PLUGIN_PREFIX, strlen(PLUGIN_PREFIX)) == 0) {
        NTSTATUS status = ks_plugin_load(spec + strlen(PLUGIN_PREFIX), plugin, err);
        if (NT_SUCCESS(status))
            *entry = ks_plugin_entry(*plugin);
        return status;
    }
    *entry = ks_catalogue_find(spec);
    if (*entry != NULL)
        return STATUS_SUCCESS;
    char names[512];
    return ks_error_set(err, STATUS_OBJECT_NAME_NOT_FOUND, "unknown allocator '%s'; known: %s, or plugin:PATH.so",
                        spec, known_names(names, sizeof names));
}
