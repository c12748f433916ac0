/*
 * journal.c — one JSON line per operation that changes a store, and per
 * failed one (SPEC §3): time, operation, store, digest, label, old digest,
 * outcome, error text, and the caller's uid and pid.  The backend appends
 * and rotates; this file only formats.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static __thread long caller_uid = -1, caller_pid = -1;

void casfs_caller_set(long uid, long pid)
{
	caller_uid = uid;
	caller_pid = pid;
}

struct buf {
	char *p;
	size_t len, cap;
	bool overflow;
};

static void put(struct buf *b, const char *s, size_t n)
{
	if (b->len + n >= b->cap) {
		b->overflow = true;
		return;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
}

static void puts_(struct buf *b, const char *s)
{
	put(b, s, strlen(s));
}

/* Length of the valid UTF-8 sequence at c (1-4), or 0 if it is not one
 * (stray continuation bytes, overlong forms, surrogates, > U+10FFFF, or a
 * sequence cut short). */
static int utf8_len(const unsigned char *c)
{
	if (c[0] < 0x80)
		return 1;
	int n;
	uint32_t cp;
	if ((c[0] & 0xe0) == 0xc0) {
		n = 2;
		cp = c[0] & 0x1f;
	} else if ((c[0] & 0xf0) == 0xe0) {
		n = 3;
		cp = c[0] & 0x0f;
	} else if ((c[0] & 0xf8) == 0xf0) {
		n = 4;
		cp = c[0] & 0x07;
	} else {
		return 0;
	}
	for (int i = 1; i < n; i++) {
		if ((c[i] & 0xc0) != 0x80)
			return 0; /* also stops at the terminating NUL */
		cp = (cp << 6) | (c[i] & 0x3f);
	}
	static const uint32_t min[5] = { 0, 0, 0x80, 0x800, 0x10000 };
	if (cp < min[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

/* Appends "key":"value" with JSON escaping.  Names are any bytes but NUL
 * (SPEC §2) while JSON is UTF-8: bytes that are not valid UTF-8 are
 * written as \u00XX, one per byte (lossy, but the line stays JSON). */
static void put_str(struct buf *b, const char *key, const char *v)
{
	if (!v)
		return;
	char tmp[16];
	snprintf(tmp, sizeof(tmp), ",\"%s\":\"", key);
	puts_(b, tmp);
	for (const unsigned char *c = (const unsigned char *)v; *c;) {
		int n = utf8_len(c);
		if (*c == '"' || *c == '\\') {
			char e[2] = { '\\', (char)*c };
			put(b, e, 2);
		} else if (n == 0 || *c < 0x20 || *c == 0x7f) {
			char e[8];
			snprintf(e, sizeof(e), "\\u%04x", *c);
			puts_(b, e);
			n = 1;
		} else {
			put(b, (const char *)c, (size_t)n);
		}
		c += n ? n : 1;
	}
	put(b, "\"", 1);
}

int casfs__journal(casfs_store *s, const struct casfs_event *ev)
{
	char saved[512];
	snprintf(saved, sizeof(saved), "%s", casfs_error_last());
	/* Room for every field escaped at its worst (6 bytes a byte). */
	size_t cap = 1024 + strlen(saved) * 6 + strlen(s->id) * 6;
	const char *fields[] = { ev->op, ev->label, ev->from, ev->digest, ev->old };
	for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
		cap += fields[i] ? strlen(fields[i]) * 6 + 16 : 0;
	char *line = malloc(cap);
	if (!line)
		return -ENOMEM;
	struct buf b = { line, 0, cap - 2, false };
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	char head[96];
	snprintf(head, sizeof(head), "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ\"",
		 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
		 ts.tv_nsec / 1000);
	puts_(&b, head);
	put_str(&b, "op", ev->op);
	put_str(&b, "store", s->id);
	put_str(&b, "label", ev->label);
	put_str(&b, "from", ev->from);
	put_str(&b, "digest", ev->digest);
	put_str(&b, "old", ev->old);
	put_str(&b, "outcome", ev->result < 0 ? "error" : "ok");
	if (ev->result < 0) {
		const char *name = strerrorname_np(-ev->result);
		put_str(&b, "errno", name ? name : "EIO");
		put_str(&b, "error", saved[0] ? saved : strerror(-ev->result));
	}
	long uid = caller_uid >= 0 ? caller_uid : (long)getuid();
	long pid = caller_pid >= 0 ? caller_pid : casfs__pid();
	char tail[64];
	snprintf(tail, sizeof(tail), ",\"uid\":%ld,\"pid\":%ld}", uid, pid);
	puts_(&b, tail);
	int rc = -ENAMETOOLONG; /* cannot happen: cap covers the worst case */
	if (!b.overflow) {
		line[b.len++] = '\n';
		/* A label change is durable by now: so must its record be, or
		 * a power cut could lose the old digest (SPEC §6). */
		bool sync = ev->label && ev->result == 0;
		rc = s->be->journal_append(s, line, b.len, sync);
	}
	free(line);
	/* Leave the caller's error message as it was. */
	casfs__err(0, "%s", saved);
	return rc;
}

int casfs__journal_ret(casfs_store *s, const char *op, const char *label, const char *digest,
		       const char *old, int result)
{
	struct casfs_event ev = {
		.op = op, .label = label, .digest = digest, .old = old, .result = result,
	};
	casfs__journal(s, &ev);
	return result;
}

int casfs_journal_read(casfs_store *s, casfs_name_fn fn, void *ud)
{
	return s->be->journal_read(s, fn, ud);
}
