/*
 * watch.c -- the cold half of watch.h: naming pins and callbacks.
 */
#include "watch.h"

#include <stdio.h>

void ks_watch_name_pin(ks_watch *watch, unsigned pin, const char *allocator)
{
    if (watch == NULL || pin >= KS_WATCH_PINS)
        return;
    snprintf(watch->pin_allocator[pin], sizeof watch->pin_allocator[pin], "%s", allocator ? allocator : "?");
}

const char *ks_watch_callback_name(ks_watch_callback callback)
{
    static const char *const names[KS_WATCH_CALLBACK_COUNT] = {
        [KS_WATCH_IDLE] = "no callback",
        [KS_WATCH_INITIALIZE] = "InitializeAllocator",
        [KS_WATCH_ALLOCATE] = "Allocate",
        [KS_WATCH_FREE] = "Free",
        [KS_WATCH_DELETE] = "DeleteAllocator",
        [KS_WATCH_FRAME_ACCESS] = "an access to a frame it returned",
        [KS_WATCH_LOAD] = "loading the plugin (its constructors)",
    };
    return (unsigned)callback < KS_WATCH_CALLBACK_COUNT ? names[callback] : "?";
}
