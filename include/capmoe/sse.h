/* sse.h - Server-Sent Events framing of the streamed answers. */
#ifndef CAPMOE_SSE_H
#define CAPMOE_SSE_H

#include <stddef.h>

/* "data: <json>\n\n" (malloc'd, the caller frees; *len optional). */
char *capmoe_sse_frame(const char *json, size_t *len);

#endif
