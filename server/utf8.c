/* utf8.c - UTF-8 checks for the HTTP layer (utf8.h). */
#include "capmoe/utf8.h"

int capmoe_utf8_valid(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n; /* continuation bytes */
        unsigned cp;
        if (c >= 0xC2 && c <= 0xDF) { n = 1; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { n = 2; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { n = 3; cp = c & 0x07; }
        else return 0; /* continuation byte, C0/C1 overlong lead, or > U+10FFFF lead */
        if (len - i - 1 < n) return 0;
        for (size_t k = 1; k <= n; k++) {
            if ((p[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF))) return 0;
        if (cp >= 0xD800 && cp <= 0xDFFF) return 0;
        i += n + 1;
    }
    return 1;
}

size_t capmoe_utf8_complete(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s;
    /* Walk back over at most 3 continuation bytes to the last lead byte. */
    size_t i = len, back = 0;
    while (i > 0 && back < 4 && (p[i - 1] & 0xC0) == 0x80) {
        i--;
        back++;
    }
    if (i == 0) return back ? 0 : len;
    unsigned c = p[i - 1];
    size_t need;
    if (c < 0x80) return len;
    else if (c >= 0xF0) need = 3;
    else if (c >= 0xE0) need = 2;
    else if (c >= 0xC0) need = 1;
    else return len;
    return back >= need ? len : i - 1;
}

/* Code points in s[0..n) (bytes that are not continuation bytes). */
long capmoe_utf8_chars(const char *s, size_t n) {
    long k = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) k++;
    return k;
}
