/* version.c - the build's revision (only this file is rebuilt when it changes). */
#include "capmoe/version.h"

#ifndef CAPMOE_REVISION
#define CAPMOE_REVISION "unknown"
#endif

const char *capmoe_revision(void) { return CAPMOE_REVISION[0] ? CAPMOE_REVISION : "unknown"; }

#ifndef CAPMOE_BUILD_FLAGS
#define CAPMOE_BUILD_FLAGS ""
#endif

const char *capmoe_build_flags(void) {
#if defined(__clang__)
    return "clang " __clang_version__ ", C11, " CAPMOE_BUILD_FLAGS;
#elif defined(__GNUC__)
    return "gcc " __VERSION__ ", C11, " CAPMOE_BUILD_FLAGS;
#else
    return "C11, " CAPMOE_BUILD_FLAGS;
#endif
}
