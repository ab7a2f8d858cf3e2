/* utf8.h - UTF-8 checks the HTTP layer makes on request bodies and on
 * streamed text. */
#ifndef CAPMOE_UTF8_H
#define CAPMOE_UTF8_H

#include <stddef.h>

/* 1 when s[0..len) is valid UTF-8 (no overlongs, surrogates or > U+10FFFF). */
int capmoe_utf8_valid(const char *s, size_t len);
/* Length of the longest prefix of s[0..len) that ends on a character
 * boundary (drops a trailing incomplete sequence). */
size_t capmoe_utf8_complete(const char *s, size_t len);
/* Code points in s[0..n) (counts the bytes that are not continuation bytes). */
long capmoe_utf8_chars(const char *s, size_t n);

#endif
