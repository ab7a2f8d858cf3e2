/* version.h - the version of capmoe and the revision it was built from. */
#ifndef CAPMOE_VERSION_H
#define CAPMOE_VERSION_H

#define CAPMOE_VERSION "0.1.0"

/* The git commit the binaries were built from (make REVISION=...; the
 * Makefile asks git), or "unknown". */
const char *capmoe_revision(void);

#endif
