/*
 * fuzz_journal.c — the store's journal (SPEC §3): one line of JSON per
 * operation that changes a store and per failed one, read back by
 * casfs_journal_read (`casfs events`).
 *
 * Byte 0, bit 0 chooses what is fuzzed; bit 1 the store (sha256 / sha1).
 *
 * Writer (bit 0 clear).  The rest of the input is split at NUL bytes into
 * NAME1, NAME2, DIGEST, EXPECT, CONTENT (missing ones are "").  Byte 1
 * chooses the arguments below.  Label operations are called with those
 * untrusted strings (valid label names or not):
 *     [label_mkdir(NAME1) ; label_rmdir(NAME1)] ;
 *     label_set(NAME1, digest, expect) ; label_rename(NAME1, NAME2) ;
 *     [label_commit(NAME2, CONTENT)] ; label_remove(NAME2, expect)
 * and every journal line casfs_journal_read then returns must be
 *   - one strict JSON object (RFC 8259: UTF-8, no raw control character,
 *     valid escapes, nothing after it) — `casfs events | jq` and Python's
 *     json.loads must be able to read any journal;
 *   - with time, op, store, outcome, uid and pid, and errno and error when
 *     the outcome is "error";
 *   - the record of the operation it follows, in order: same op, the label
 *     and "from" names and the digest decoding to exactly the bytes passed
 *     (bytes that are not UTF-8 as U+0000-U+00FF, one per byte, as
 *     journal.c writes them), the outcome matching the return code.
 * The journal is bounded at 4 KiB (CASFS_JOURNAL_MAX) so rotation is
 * exercised: what is read back must be the newest lines, in order.
 *
 * Reader (bit 0 set).  Byte 1 says where to split the rest into
 * .casfs/journal.1 and .casfs/journal, byte 2 after how many lines the
 * callback stops the walk.  casfs_journal_read must return every complete
 * line ('\n'-terminated) of journal.1 then journal, oldest first, without
 * its newline, nothing else; and stop when asked.
 */
#include "fuzz_common.h"

static const char *const HELLO_SHA1 = "f572d396fae9206628714fb2ce00f72e94f2258f";
static const char *const HELLO_SHA256 =
	"5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
static const char *const STORE_IDS[2] = { "j256", "j1" };

static casfs_root *root;
static const char *scratch;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	/* Small, so rotation into journal.1 happens often. */
	setenv("CASFS_JOURNAL_MAX", "4096", 1);
	scratch = fuzz_scratch_dir("journal");
	SETUP(casfs_root_open(&root, scratch, CASFS_ROOT_NOSYNC) == 0, "casfs_root_open");
	SETUP(casfs_store_create(root, "j256", CASFS_SHA256, NULL, 0) == 0, "create j256");
	SETUP(casfs_store_create(root, "j1", CASFS_SHA1, NULL, 0) == 0, "create j1");
	return 0;
}

/* ------------------------------------------------------- strict JSON */

struct member {
	const char *key;  /* decoded, NUL-terminated */
	char *val;        /* decoded string, or the number's text */
	size_t len;
	bool is_string, is_number;
};

struct json {
	const unsigned char *p, *end;
	const char *why;   /* first error */
	struct member m[32];
	int n;
	char *heap[80];    /* decoded strings to free */
	int nheap;
};

static bool jfail(struct json *j, const char *why)
{
	if (!j->why)
		j->why = why;
	return false;
}

static void jws(struct json *j)
{
	while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
		j->p++;
}

static int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static bool read_u4(struct json *j, unsigned *cp)
{
	if (j->end - j->p < 4)
		return jfail(j, "short \\u escape");
	unsigned v = 0;
	for (int i = 0; i < 4; i++) {
		int h = hexval(j->p[i]);
		if (h < 0)
			return jfail(j, "bad hex digit in \\u escape");
		v = v * 16 + (unsigned)h;
	}
	j->p += 4;
	*cp = v;
	return true;
}

static size_t put_utf8(char *o, unsigned cp)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (char)(0xc0 | (cp >> 6));
		o[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (char)(0xe0 | (cp >> 12));
		o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		o[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	o[0] = (char)(0xf0 | (cp >> 18));
	o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
	o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
	o[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

/* Length of the well-formed UTF-8 sequence at p (Unicode table 3-7), or 0. */
static size_t utf8_len(const unsigned char *p, const unsigned char *end)
{
	unsigned char c = p[0];
	size_t n;
	unsigned char lo = 0x80, hi = 0xbf;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef) {
		n = 3;
		if (c == 0xe0)
			lo = 0xa0;
		if (c == 0xed)
			hi = 0x9f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		if (c == 0xf0)
			lo = 0x90;
		if (c == 0xf4)
			hi = 0x8f;
	} else
		return 0;
	if ((size_t)(end - p) < n)
		return 0;
	if (p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if (p[i] < 0x80 || p[i] > 0xbf)
			return 0;
	return n;
}

/* Parses a string; its decoded bytes go to *out (malloc'ed) if out. */
static bool jstring(struct json *j, char **out, size_t *outlen)
{
	if (j->p >= j->end || *j->p != '"')
		return jfail(j, "expected a string");
	j->p++;
	char *o = malloc((size_t)(j->end - j->p) + 1);
	SETUP(o != NULL, "malloc");
	size_t n = 0;
	for (;;) {
		if (j->p >= j->end) {
			free(o);
			return jfail(j, "unterminated string");
		}
		unsigned char c = *j->p++;
		if (c == '"')
			break;
		if (c < 0x20) {
			free(o);
			return jfail(j, "raw control character in a string");
		}
		if (c == '\\') {
			if (j->p >= j->end) {
				free(o);
				return jfail(j, "dangling backslash");
			}
			unsigned char e = *j->p++;
			unsigned cp;
			switch (e) {
			case '"': o[n++] = '"'; break;
			case '\\': o[n++] = '\\'; break;
			case '/': o[n++] = '/'; break;
			case 'b': o[n++] = '\b'; break;
			case 'f': o[n++] = '\f'; break;
			case 'n': o[n++] = '\n'; break;
			case 'r': o[n++] = '\r'; break;
			case 't': o[n++] = '\t'; break;
			case 'u':
				if (!read_u4(j, &cp)) {
					free(o);
					return false;
				}
				if (cp >= 0xdc00 && cp <= 0xdfff) {
					free(o);
					return jfail(j, "lone low surrogate escape");
				}
				if (cp >= 0xd800 && cp <= 0xdbff) {
					unsigned lo;
					if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u') {
						free(o);
						return jfail(j, "lone high surrogate escape");
					}
					j->p += 2;
					if (!read_u4(j, &lo) || lo < 0xdc00 || lo > 0xdfff) {
						free(o);
						return jfail(j, "bad surrogate pair");
					}
					cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
				}
				n += put_utf8(o + n, cp);
				break;
			default:
				free(o);
				return jfail(j, "invalid escape");
			}
			continue;
		}
		if (c >= 0x80) {
			size_t k = utf8_len(j->p - 1, j->end);
			if (k == 0) {
				free(o);
				return jfail(j, "invalid UTF-8 in a string");
			}
			memcpy(o + n, j->p - 1, k);
			n += k;
			j->p += k - 1;
			continue;
		}
		o[n++] = (char)c;
	}
	o[n] = '\0';
	if (out) {
		*out = o;
		*outlen = n;
	} else {
		free(o);
	}
	return true;
}

static bool jnumber(struct json *j)
{
	const unsigned char *s = j->p;
	if (j->p < j->end && *j->p == '-')
		j->p++;
	if (j->p >= j->end)
		return jfail(j, "bad number");
	if (*j->p == '0')
		j->p++;
	else if (*j->p >= '1' && *j->p <= '9')
		while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
			j->p++;
	else
		return jfail(j, "bad number");
	if (j->p < j->end && *j->p == '.') {
		j->p++;
		if (j->p >= j->end || *j->p < '0' || *j->p > '9')
			return jfail(j, "bad fraction");
		while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
			j->p++;
	}
	if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
		j->p++;
		if (j->p < j->end && (*j->p == '+' || *j->p == '-'))
			j->p++;
		if (j->p >= j->end || *j->p < '0' || *j->p > '9')
			return jfail(j, "bad exponent");
		while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
			j->p++;
	}
	return j->p > s;
}

static bool jvalue(struct json *j, int depth);

static bool jlit(struct json *j, const char *lit)
{
	size_t n = strlen(lit);
	if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n))
		return jfail(j, "bad literal");
	j->p += n;
	return true;
}

static bool jcontainer(struct json *j, int depth, bool object)
{
	j->p++; /* { or [ */
	jws(j);
	char close = object ? '}' : ']';
	if (j->p < j->end && *j->p == close) {
		j->p++;
		return true;
	}
	for (;;) {
		jws(j);
		if (object) {
			if (!jstring(j, NULL, NULL))
				return false;
			jws(j);
			if (j->p >= j->end || *j->p != ':')
				return jfail(j, "expected ':'");
			j->p++;
		}
		if (!jvalue(j, depth + 1))
			return false;
		jws(j);
		if (j->p < j->end && *j->p == ',') {
			j->p++;
			continue;
		}
		if (j->p < j->end && *j->p == close) {
			j->p++;
			return true;
		}
		return jfail(j, "expected ',' or a closing bracket");
	}
}

static bool jvalue(struct json *j, int depth)
{
	if (depth > 64)
		return jfail(j, "nested too deeply");
	jws(j);
	if (j->p >= j->end)
		return jfail(j, "expected a value");
	switch (*j->p) {
	case '"': return jstring(j, NULL, NULL);
	case '{': return jcontainer(j, depth, true);
	case '[': return jcontainer(j, depth, false);
	case 't': return jlit(j, "true");
	case 'f': return jlit(j, "false");
	case 'n': return jlit(j, "null");
	default: return jnumber(j);
	}
}

static void json_free(struct json *j)
{
	for (int i = 0; i < j->nheap; i++)
		free(j->heap[i]);
	j->nheap = 0;
}

static char *keep(struct json *j, char *s)
{
	SETUP(j->nheap < (int)(sizeof(j->heap) / sizeof(j->heap[0])), "json heap");
	j->heap[j->nheap++] = s;
	return s;
}

/* Parses one journal line: a single top-level object whose members are
 * kept (strings decoded, numbers as text). */
static bool json_line(struct json *j, const char *line, size_t len)
{
	memset(j, 0, sizeof(*j));
	j->p = (const unsigned char *)line;
	j->end = j->p + len;
	jws(j);
	if (j->p >= j->end || *j->p != '{')
		return jfail(j, "not an object");
	j->p++;
	jws(j);
	if (j->p < j->end && *j->p == '}') {
		j->p++;
	} else {
		for (;;) {
			jws(j);
			char *key;
			size_t klen;
			if (!jstring(j, &key, &klen))
				return false;
			keep(j, key);
			if (j->n >= (int)(sizeof(j->m) / sizeof(j->m[0])))
				return jfail(j, "too many members");
			for (int i = 0; i < j->n; i++)
				if (!strcmp(j->m[i].key, key))
					return jfail(j, "duplicate key");
			struct member *m = &j->m[j->n++];
			memset(m, 0, sizeof(*m));
			m->key = key;
			jws(j);
			if (j->p >= j->end || *j->p != ':')
				return jfail(j, "expected ':'");
			j->p++;
			jws(j);
			if (j->p < j->end && *j->p == '"') {
				if (!jstring(j, &m->val, &m->len))
					return false;
				keep(j, m->val);
				m->is_string = true;
			} else {
				const unsigned char *s = j->p;
				if (!jvalue(j, 1))
					return false;
				if (*s == '-' || (*s >= '0' && *s <= '9')) {
					m->is_number = true;
					m->len = (size_t)(j->p - s);
					m->val = keep(j, strndup((const char *)s, m->len));
				}
			}
			jws(j);
			if (j->p < j->end && *j->p == ',') {
				j->p++;
				continue;
			}
			if (j->p < j->end && *j->p == '}') {
				j->p++;
				break;
			}
			return jfail(j, "expected ',' or '}'");
		}
	}
	jws(j);
	if (j->p != j->end)
		return jfail(j, "text after the object");
	return true;
}

static const struct member *get(const struct json *j, const char *key)
{
	for (int i = 0; i < j->n; i++)
		if (!strcmp(j->m[i].key, key))
			return &j->m[i];
	return NULL;
}

/* ------------------------------------------------------- lines read back */

struct lines {
	char **v;
	size_t *len;
	size_t n, cap;
	size_t stop_after; /* 0: never stop */
};

static int collect(const char *line, void *ud)
{
	struct lines *ls = ud;
	CHECK(line != NULL);
	size_t n = strlen(line);
	CHECK(!memchr(line, '\n', n), "journal_read gave a line with a newline");
	if (ls->n == ls->cap) {
		ls->cap = ls->cap ? 2 * ls->cap : 16;
		ls->v = realloc(ls->v, ls->cap * sizeof(*ls->v));
		ls->len = realloc(ls->len, ls->cap * sizeof(*ls->len));
		SETUP(ls->v && ls->len, "realloc");
	}
	ls->v[ls->n] = strdup(line);
	SETUP(ls->v[ls->n] != NULL, "strdup");
	ls->len[ls->n++] = n;
	return ls->stop_after && ls->n == ls->stop_after ? 1 : 0;
}

static void lines_free(struct lines *ls)
{
	for (size_t i = 0; i < ls->n; i++)
		free(ls->v[i]);
	free(ls->v);
	free(ls->len);
	memset(ls, 0, sizeof(*ls));
}

/* ---------------------------------------------------------------- writer */

struct event {
	const char *op;
	const char *label;  /* expected "label" member, NULL if none */
	const char *from;   /* expected "from" member (renames) */
	const char *digest; /* expected "digest" member when not NULL */
	int rc;
};

/* What a string passed to casfs reads back as from the journal: itself if
 * it is UTF-8; otherwise each byte that is not part of a valid sequence
 * stands for U+0000-U+00FF (journal.c writes it as \u00XX).  Malloc'ed. */
static char *journal_form(const char *s, size_t *outlen)
{
	size_t n = strlen(s);
	char *o = malloc(2 * n + 1);
	SETUP(o != NULL, "malloc");
	const unsigned char *p = (const unsigned char *)s, *end = p + n;
	size_t k = 0;
	while (p < end) {
		size_t len = *p < 0x80 ? 1 : utf8_len(p, end);
		if (len == 0) {
			k += put_utf8(o + k, *p);
			p++;
		} else {
			memcpy(o + k, p, len);
			k += len;
			p += len;
		}
	}
	o[k] = '\0';
	*outlen = k;
	return o;
}

static void check_member_is(const struct json *j, const char *key, const char *want, size_t i)
{
	const struct member *m = get(j, key);
	if (!want) {
		CHECK(!m, "line %zu has a '%s' member, none expected", i, key);
		return;
	}
	CHECK(m && m->is_string, "line %zu lacks the string member '%s'", i, key);
	size_t wlen;
	char *w = journal_form(want, &wlen);
	CHECK(m->len == wlen && !memcmp(m->val, w, wlen),
	      "line %zu: '%s' decodes to %zu bytes that differ from the %zu passed (%zu as UTF-8)",
	      i, key, m->len, strlen(want), wlen);
	free(w);
}

static void check_line(const char *line, size_t len, size_t i, const char *store,
		       const struct event *ev)
{
	struct json j;
	if (!json_line(&j, line, len)) {
		size_t at = (size_t)((const char *)j.p - line);
		fprintf(stderr, "==casfs-fuzz== journal line %zu (%zu bytes) is not strict JSON: %s "
			"near byte %zu\n", i, len, j.why, at);
		json_free(&j);
		CHECK(false, "journal line is not valid JSON: %s", j.why);
	}
	const struct member *m;
	m = get(&j, "time");
	CHECK(m && m->is_string && m->len == 27 && m->val[10] == 'T' && m->val[26] == 'Z',
	      "line %zu: bad or missing time", i);
	m = get(&j, "op");
	CHECK(m && m->is_string && m->len > 0, "line %zu: no op", i);
	m = get(&j, "store");
	CHECK(m && m->is_string && !strcmp(m->val, store), "line %zu: store is not '%s'", i, store);
	m = get(&j, "uid");
	CHECK(m && m->is_number && strtol(m->val, NULL, 10) == (long)getuid(), "line %zu: uid", i);
	m = get(&j, "pid");
	CHECK(m && m->is_number && strtol(m->val, NULL, 10) == (long)getpid(), "line %zu: pid", i);
	const struct member *out = get(&j, "outcome");
	CHECK(out && out->is_string && (!strcmp(out->val, "ok") || !strcmp(out->val, "error")),
	      "line %zu: outcome", i);
	bool error = !strcmp(out->val, "error");
	const struct member *en = get(&j, "errno"), *et = get(&j, "error");
	if (error)
		CHECK(en && en->is_string && en->len && et && et->is_string,
		      "line %zu: error without errno and error text", i);
	else
		CHECK(!en && !et, "line %zu: ok with an error", i);
	if (ev) {
		check_member_is(&j, "op", ev->op, i);
		check_member_is(&j, "label", ev->label, i);
		check_member_is(&j, "from", ev->from, i);
		if (ev->digest)
			check_member_is(&j, "digest", ev->digest, i);
		CHECK(error == (ev->rc < 0), "line %zu (%s): outcome %s but the call returned %d", i,
		      ev->op, out->val, ev->rc);
		if (error) {
			const char *name = strerrorname_np(-ev->rc);
			CHECK(!name || !strcmp(en->val, name), "line %zu: errno %s, call returned %s", i,
			      en->val, name);
		}
	}
	json_free(&j);
}

/* NUL-separated fields of the input ("" when missing). */
static const char *field(const char *buf, size_t size, int k)
{
	size_t off = 0;
	for (int i = 0; i < k; i++) {
		size_t n = strnlen(buf + off, size - off);
		if (off + n >= size)
			return "";
		off += n + 1;
	}
	return buf + off;
}

static void run_writer(casfs_store *s, const char *hello, const char *other, const uint8_t *data,
		       size_t size)
{
	uint8_t ctl = size ? data[0] : 0;
	const uint8_t *rest = size ? data + 1 : data;
	size_t rn = size ? size - 1 : 0;
	char *buf = fuzz_cstr(rest, rn);
	const char *name1 = field(buf, rn, 0), *name2 = field(buf, rn, 1);
	const char *dig = field(buf, rn, 2), *exp = field(buf, rn, 3);
	const char *content = field(buf, rn, 4);

	const char *digest;
	switch (ctl & 3) {
	case 0: digest = hello; break;
	case 1: digest = dig; break;
	case 2: digest = NULL; break;
	default: digest = other; break;
	}
	const char *expect;
	switch ((ctl >> 2) & 7) {
	case 1: expect = ""; break;
	case 2: expect = CASFS_LABEL_EXISTS; break;
	case 3: expect = hello; break;
	case 4: expect = exp; break;
	case 5: expect = other; break;
	default: expect = NULL; break;
	}

	struct event evs[4];
	size_t nev = 0;
	char *old = malloc(CASFS_HEX_MAX), *hex = malloc(CASFS_HEX_MAX);
	SETUP(old && hex, "malloc");

	/* Label directories first: their lines are skipped when matching, and
	 * the newest line must be one that is matched. */
	if (ctl & 0x40) {
		casfs_label_mkdir(s, name1, 0755);
		casfs_label_rmdir(s, name1);
	}

	int rc = casfs_label_set(s, name1, digest, expect, old);
	CHECK(rc <= 0, "label_set returned %d", rc);
	fuzz_check_error_text();
	evs[nev++] = (struct event){ "label", name1, NULL, digest, rc };

	rc = casfs_label_rename(s, name1, name2);
	fuzz_check_error_text();
	evs[nev++] = (struct event){ "rename-label", name2, name1, NULL, rc };

	if (ctl & 0x20) {
		casfs_writer *w;
		SETUP(casfs_writer_open(&w, s) == 0, "casfs_writer_open");
		SETUP(casfs_writer_write(w, content, strlen(content)) == 0, "casfs_writer_write");
		rc = casfs_label_commit(s, name2, w, (ctl & 0x80) ? expect : NULL, hex);
		fuzz_check_error_text();
		if (rc >= 0)
			CHECK(casfs_digest_check(casfs_store_algo(s), hex) == 0, "commit digest");
		casfs_writer_free(w);
		evs[nev++] = (struct event){ "store-at-label", name2, NULL, NULL, rc };
	}

	rc = casfs_label_remove(s, name2, (ctl & 0x80) ? expect : NULL, old);
	fuzz_check_error_text();
	evs[nev++] = (struct event){ "remove-label", name2, NULL, NULL, rc };

	struct lines ls = { 0 };
	rc = casfs_journal_read(s, collect, &ls);
	CHECK(rc == 0, "journal_read failed: %d (%s)", rc, casfs_error_last());
	/* Every line is well-formed; the ones that record the calls above are
	 * their newest records, in order (rotation may drop older ones). */
	size_t k = 0;
	for (size_t i = 0; i < ls.n; i++) {
		check_line(ls.v[i], ls.len[i], i, casfs_store_id(s), NULL);
		struct json j;
		bool ok = json_line(&j, ls.v[i], ls.len[i]);
		const struct member *op = ok ? get(&j, "op") : NULL;
		bool dir_op = op && (!strcmp(op->val, "mkdir-label") || !strcmp(op->val, "rmdir-label"));
		json_free(&j);
		if (!dir_op)
			k++;
	}
	CHECK(k <= nev, "%zu journal lines for %zu operations", k, nev);
	CHECK(k >= 1, "the newest operation's journal line is missing");
	for (size_t i = 0, e = nev - k; i < ls.n; i++) {
		struct json j;
		SETUP(json_line(&j, ls.v[i], ls.len[i]), "reparse");
		const struct member *op = get(&j, "op");
		bool dir_op = !strcmp(op->val, "mkdir-label") || !strcmp(op->val, "rmdir-label");
		json_free(&j);
		if (dir_op)
			continue;
		check_line(ls.v[i], ls.len[i], i, casfs_store_id(s), &evs[e++]);
	}
	lines_free(&ls);
	free(old);
	free(hex);
	free(buf);
}

/* ---------------------------------------------------------------- reader */

/* Complete lines of buf, each cut at its first NUL (as a C string is). */
static void expected_lines(const uint8_t *buf, size_t n, struct lines *out)
{
	size_t start = 0;
	for (size_t i = 0; i < n; i++) {
		if (buf[i] != '\n')
			continue;
		size_t len = strnlen((const char *)buf + start, i - start);
		if (out->n == out->cap) {
			out->cap = out->cap ? 2 * out->cap : 16;
			out->v = realloc(out->v, out->cap * sizeof(*out->v));
			out->len = realloc(out->len, out->cap * sizeof(*out->len));
			SETUP(out->v && out->len, "realloc");
		}
		out->v[out->n] = strndup((const char *)buf + start, len);
		out->len[out->n++] = len;
		start = i + 1;
	}
}

static void run_reader(casfs_store *s, const char *meta, const uint8_t *data, size_t size)
{
	uint8_t split = size > 0 ? data[0] : 0, stop = size > 1 ? data[1] : 0;
	const uint8_t *rest = size > 2 ? data + 2 : data;
	size_t rn = size > 2 ? size - 2 : 0;
	size_t cut = rn * split / 255;
	char path[4096];
	if (cut > 0) {
		snprintf(path, sizeof(path), "%s/journal.1", meta);
		SETUP(fuzz_write_file(path, rest, cut) == 0, "write journal.1");
	}
	snprintf(path, sizeof(path), "%s/journal", meta);
	SETUP(fuzz_write_file(path, rest + cut, rn - cut) == 0, "write journal");

	struct lines want = { 0 };
	expected_lines(rest, cut, &want);
	expected_lines(rest + cut, rn - cut, &want);

	struct lines got = { .stop_after = stop };
	int rc = casfs_journal_read(s, collect, &got);
	size_t expect_n = stop && stop <= want.n ? stop : want.n;
	CHECK(rc == (stop && stop <= want.n ? 1 : 0), "journal_read returned %d", rc);
	CHECK(got.n == expect_n, "journal_read gave %zu lines, the files hold %zu complete ones "
	      "(stop after %u)", got.n, want.n, stop);
	for (size_t i = 0; i < got.n; i++)
		CHECK(got.len[i] == want.len[i] && !memcmp(got.v[i], want.v[i], got.len[i]),
		      "journal line %zu differs from the file's", i);
	lines_free(&want);
	lines_free(&got);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t sel = size ? data[0] : 0;
	bool reader = sel & 1;
	int a = (sel >> 1) & 1;
	const char *id = STORE_IDS[a];
	char meta[4096], path[4096];
	snprintf(meta, sizeof(meta), "%s/%s/.casfs", scratch, id);

	/* A fresh journal, no labels, only the one blob. */
	snprintf(path, sizeof(path), "%s/journal", meta);
	unlink(path);
	snprintf(path, sizeof(path), "%s/journal.1", meta);
	unlink(path);
	snprintf(path, sizeof(path), "%s/%s/labels", scratch, id);
	fuzz_empty_dir(path);
	snprintf(path, sizeof(path), "%s/%s/data", scratch, id);
	fuzz_empty_dir(path);

	int fds = fuzz_count_fds();
	casfs_store *s;
	CHECK(casfs_store_open(&s, root, id) == 0, "open %s", id);
	const char *hello = a ? HELLO_SHA1 : HELLO_SHA256;
	const char *other = a ? HELLO_SHA256 : HELLO_SHA1;
	char hex[CASFS_HEX_MAX];
	if (!reader) {
		SETUP(casfs_blob_put(s, "hello\n", 6, hex) >= 0 && !strcmp(hex, hello), "hello blob");
		/* The store line of that put is not under test here. */
		snprintf(path, sizeof(path), "%s/journal", meta);
		unlink(path);
		run_writer(s, hello, other, size ? data + 1 : data, size ? size - 1 : 0);
	} else {
		run_reader(s, meta, size ? data + 1 : data, size ? size - 1 : 0);
	}
	casfs_store_free(s);
	fuzz_check_fds(fds);
	return 0;
}
