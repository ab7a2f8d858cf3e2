/* version.c - the build's revision (only this file is rebuilt when it changes). */
#include "capmoe/version.h"

#ifndef CAPMOE_REVISION
#define CAPMOE_REVISION "unknown"
#endif

const char *capmoe_revision(void) { return CAPMOE_REVISION[0] ? CAPMOE_REVISION : "unknown"; }
