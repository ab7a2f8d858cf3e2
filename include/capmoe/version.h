/* version.h - the version of capmoe and the revision it was built from. */
#ifndef CAPMOE_VERSION_H
#define CAPMOE_VERSION_H

#define CAPMOE_VERSION "0.1.0"

/* The git commit the binaries were built from (make REVISION=...; the
 * Makefile asks git), or "unknown". */
const char *capmoe_revision(void);
/* The compiler and the flags the build used ("gcc 12.2.0, C11, -O2"). */
const char *capmoe_build_flags(void);

#endif
