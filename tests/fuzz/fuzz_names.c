/*
 * fuzz_names.c — the validators of untrusted names (SPEC §2):
 * casfs_id_check, casfs_label_check, casfs_digest_check (sha1 and sha256)
 * and casfs_algo_parse, each compared with a plain reading of the spec.
 *
 * The input is split at its NUL bytes and every piece is checked as a store
 * id, a label name, a digest of each algorithm and an algorithm name.
 * Accepting what the spec refuses, or refusing what it allows, aborts.
 */
#include "fuzz_common.h"

/* What the spec says of a name: whether it is valid, and whether what is
 * wrong with it is only its length (then ENAMETOOLONG is the one answer)
 * or only something else (then EINVAL). */
struct verdict {
	bool ok;
	bool too_long; /* some length limit is exceeded */
	bool other;    /* something other than a length is wrong */
};

/* Store ids: 1–255 bytes, no '/', no NUL, not '.' or '..', not starting
 * with '.'. */
static struct verdict spec_id(const char *s, size_t n)
{
	struct verdict v = { 0 };
	if (n > CASFS_ID_MAX)
		v.too_long = true;
	if (n == 0 || memchr(s, '/', n) || s[0] == '.')
		v.other = true;
	v.ok = !v.too_long && !v.other;
	return v;
}

/* Label names: components of 1–255 bytes, no NUL, not '.' or '..'; at
 * most 4095 bytes in all. */
static struct verdict spec_label(const char *s, size_t n)
{
	struct verdict v = { 0 };
	if (n > CASFS_LABEL_MAX)
		v.too_long = true;
	const char *p = s, *end = s + n;
	for (;;) {
		const char *slash = memchr(p, '/', (size_t)(end - p));
		size_t len = slash ? (size_t)(slash - p) : (size_t)(end - p);
		if (len == 0)
			v.other = true;
		else if (len > 255)
			v.too_long = true;
		else if ((len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.'))
			v.other = true;
		if (!slash)
			break;
		p = slash + 1;
	}
	v.ok = !v.too_long && !v.other;
	return v;
}

static void check_against(const char *what, int rc, struct verdict v, const char *s, size_t n)
{
	fuzz_check_error_text();
	if (v.ok) {
		CHECK(rc == 0, "%s of %zu bytes refused (%d) though the spec allows it", what, n, rc);
		return;
	}
	CHECK(rc == -EINVAL || rc == -ENAMETOOLONG,
	      "%s of %zu bytes: refusal %d is neither -EINVAL nor -ENAMETOOLONG", what, n, rc);
	if (v.too_long && !v.other)
		CHECK(rc == -ENAMETOOLONG, "%s of %zu bytes, only too long, gave %d", what, n, rc);
	if (v.other && !v.too_long)
		CHECK(rc == -EINVAL, "%s of %zu bytes, not too long, gave %d", what, n, rc);
	CHECK(casfs_error_last()[0] != '\0', "%s refused with no error text", what);
	(void)s;
}

static void check_id(const char *s, size_t n)
{
	casfs_error_clear();
	int rc = casfs_id_check(s);
	check_against("store id", rc, spec_id(s, n), s, n);
	if (rc == 0) {
		/* What the spec's list says, spelled out. */
		CHECK(n >= 1 && n <= CASFS_ID_MAX);
		CHECK(!strchr(s, '/') && s[0] != '.');
	}
}

static void check_label(const char *s, size_t n)
{
	casfs_error_clear();
	int rc = casfs_label_check(s);
	check_against("label", rc, spec_label(s, n), s, n);
	if (rc != 0)
		return;
	CHECK(n >= 1 && n <= CASFS_LABEL_MAX, "accepted label of %zu bytes", n);
	CHECK(s[0] != '/' && s[n - 1] != '/', "accepted label with an empty component");
	CHECK(!strstr(s, "//"), "accepted label with an empty component");
	/* No component is "." or "..": look at each. */
	for (const char *p = s;;) {
		const char *slash = strchr(p, '/');
		size_t len = slash ? (size_t)(slash - p) : strlen(p);
		CHECK(len >= 1 && len <= 255, "accepted label component of %zu bytes", len);
		CHECK(!(len == 1 && p[0] == '.') && !(len == 2 && p[0] == '.' && p[1] == '.'),
		      "accepted label with a '.' or '..' component");
		if (!slash)
			break;
		p = slash + 1;
	}
}

static void check_digest(casfs_algo algo, const char *s, size_t n)
{
	size_t want = casfs_algo_hexlen(algo);
	CHECK(want == (algo == CASFS_SHA1 ? 40u : 64u));
	casfs_error_clear();
	int rc = casfs_digest_check(algo, s);
	fuzz_check_error_text();
	bool spec_ok = n == want && fuzz_is_lower_hex(s, n);
	if (spec_ok) {
		CHECK(rc == 0, "valid %s digest refused (%d)", casfs_algo_name(algo), rc);
		return;
	}
	CHECK(rc == -EINVAL, "%s digest check of %zu bytes gave %d, not -EINVAL",
	      casfs_algo_name(algo), n, rc);
	CHECK(casfs_error_last()[0] != '\0', "digest refused with no error text");
}

static void check_algo(const char *s)
{
	casfs_algo a = (casfs_algo)-1;
	casfs_error_clear();
	int rc = casfs_algo_parse(&a, s);
	fuzz_check_error_text();
	bool spec_ok = !strcmp(s, "sha256") || !strcmp(s, "sha1");
	if (!spec_ok) {
		CHECK(rc == -EINVAL, "algorithm name parse gave %d", rc);
		return;
	}
	CHECK(rc == 0, "algorithm '%s' refused", s);
	CHECK(a == CASFS_SHA1 || a == CASFS_SHA256);
	CHECK(casfs_algo_name(a) && !strcmp(casfs_algo_name(a), s), "name round trip");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *buf = fuzz_cstr(data, size);
	/* Every NUL-separated piece is a C string a caller could pass. */
	for (size_t off = 0; off <= size;) {
		const char *s = buf + off;
		size_t n = strlen(s);
		check_id(s, n);
		check_label(s, n);
		check_digest(CASFS_SHA1, s, n);
		check_digest(CASFS_SHA256, s, n);
		check_algo(s);
		off += n + 1;
	}
	free(buf);
	/* NULL is refused, never dereferenced. */
	CHECK(casfs_id_check(NULL) == -EINVAL);
	CHECK(casfs_label_check(NULL) == -EINVAL);
	CHECK(casfs_digest_check(CASFS_SHA1, NULL) == -EINVAL);
	return 0;
}
