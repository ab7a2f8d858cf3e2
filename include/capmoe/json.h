/* json.h - checks on raw JSON text that cJSON cannot make after parsing.
 *
 * cJSON decodes a string escape "\u0000" into a NUL byte and keeps strings
 * NUL-terminated, without their length, so such a string silently ends at
 * the NUL ("hello\u0000 world" reads as "hello"). The request layer refuses
 * those strings instead of cutting them; this module finds them and names
 * the field. */
#ifndef CAPMOE_JSON_H
#define CAPMOE_JSON_H

#include <stddef.h>

/* Looks for a string (a value or an object key) holding the escape \u0000
 * in text[0..len), which must be JSON that cJSON accepted. Returns 1 when
 * one is found and writes its place into path (NUL-terminated, truncated to
 * cap bytes) in the form messages[1].content, or "key 'name' of messages[1]"
 * for a key; returns 0 when there is none. */
int capmoe_json_find_nul(const char *text, size_t len, char *path, size_t cap);

#endif
