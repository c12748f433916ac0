/*
 * fuzz_config.c — a store's configuration, STORE/.casfs/config (SPEC §2:
 * "a store's algorithm is fixed when it is created and recorded in
 * .casfs/").  The file may have been damaged, hand-edited or written by a
 * later casfs.
 *
 * The input is written as the config of a store directory (data/, labels/,
 * .casfs/) and casfs_store_open must either open it with a valid algorithm
 * that the file names, or fail with a negative errno and a message; never
 * crash, never guess.  Checked:
 *   - 0 means casfs_store_algo() is sha1 or sha256, and a line of the file
 *     names that algorithm;
 *   - a line "algo=X" with X unknown, or "format=Y" with Y other than 1,
 *     makes the open fail: casfs must not use a store whose hash it cannot
 *     compute or whose layout it does not know;
 *   - an opened store can be listed; nothing leaks (memory, descriptors).
 */
#include "fuzz_common.h"

/* How much of the config casfs reads (backend_dir.c CONFIG_MAX); the
 * "must fail" checks only look at lines within it. */
#define CONFIG_READ 4096

static casfs_root *root;
static const char *scratch;
static char config_path[4096];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	scratch = fuzz_scratch_dir("config");
	SETUP(casfs_root_open(&root, scratch, CASFS_ROOT_NOSYNC) == 0, "casfs_root_open");
	fuzz_mkdirs(scratch, "cfg/data");
	fuzz_mkdirs(scratch, "cfg/labels");
	fuzz_mkdirs(scratch, "cfg/.casfs");
	snprintf(config_path, sizeof(config_path), "%s/cfg/.casfs/config", scratch);
	/* What casfs writes itself it must read back. */
	for (int a = 0; a < 2; a++) {
		casfs_store *s;
		const char *id = a ? "made-sha1" : "made-sha256";
		SETUP(casfs_store_create(root, id, a ? CASFS_SHA1 : CASFS_SHA256, NULL, 0) == 0,
		      "casfs_store_create");
		CHECK(casfs_store_open(&s, root, id) == 0, "a store casfs made does not open");
		CHECK(casfs_store_algo(s) == (a ? CASFS_SHA1 : CASFS_SHA256));
		casfs_store_free(s);
	}
	return 0;
}

static void trim(const char **p, size_t *n)
{
	while (*n && fuzz_is_ws((unsigned char)(*p)[*n - 1]))
		(*n)--;
	while (*n && fuzz_is_ws((unsigned char)**p))
		(*p)++, (*n)--;
}

static bool starts(const char *p, size_t n, const char *prefix)
{
	size_t k = strlen(prefix);
	return n >= k && !memcmp(p, prefix, k);
}

/* A line of the whole file, trimmed, that starts with "algo" and ends with
 * the algorithm's name: the weakest form of "the file names it". */
static bool names_algo(const uint8_t *data, size_t size, const char *algo)
{
	const char *p = (const char *)data, *end = p + size;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *q = p;
		size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
		n = strnlen(q, n); /* a C string ends at a NUL */
		trim(&q, &n);
		size_t k = strlen(algo);
		if (starts(q, n, "algo") && n >= k && !memcmp(q + n - k, algo, k))
			return true;
		p = nl ? nl + 1 : end;
	}
	return false;
}

/* Whether the part casfs reads has a line that must make the open fail. */
static bool has_refusal(const uint8_t *data, size_t size)
{
	size_t len = size < CONFIG_READ ? size : CONFIG_READ;
	const char *p = (const char *)data;
	const char *nul = memchr(p, '\0', len);
	const char *end = nul ? nul : p + len;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
		bool last = !nl;
		/* The last line may be cut by the read limit: judge only
		 * complete ones (or the true end of the file). */
		if (!last || nul || len == size) {
			if (starts(p, n, "algo=")) {
				size_t v = n - 5;
				if (!((v == 6 && !memcmp(p + 5, "sha256", 6)) ||
				      (v == 4 && !memcmp(p + 5, "sha1", 4))))
					return true;
			}
			if (starts(p, n, "format=") && !(n == 8 && p[7] == '1'))
				return true;
		}
		p = nl ? nl + 1 : end;
	}
	return false;
}

static int count(const char *name, void *ud)
{
	(void)name;
	(*(int *)ud)++;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int fds = fuzz_count_fds();
	SETUP(fuzz_write_file(config_path, data, size) == 0, "write config");
	casfs_store *s = NULL;
	casfs_error_clear();
	int rc = casfs_store_open(&s, root, "cfg");
	fuzz_check_error_text();
	if (rc < 0) {
		CHECK(fuzz_plausible_errno(rc), "store_open gave %d", rc);
		CHECK(casfs_error_last()[0] != '\0', "store_open failed (%d) with no message", rc);
	} else {
		CHECK(rc == 0, "store_open returned %d", rc);
		CHECK(s != NULL);
		casfs_algo a = casfs_store_algo(s);
		CHECK(a == CASFS_SHA1 || a == CASFS_SHA256, "opened with algorithm %d", (int)a);
		CHECK(!strcmp(casfs_store_id(s), "cfg"));
		CHECK(names_algo(data, size, casfs_algo_name(a)),
		      "store opened as %s, but no line of its config names that algorithm",
		      casfs_algo_name(a));
		CHECK(!has_refusal(data, size),
		      "store opened as %s though its config has an unknown algo= or format= line",
		      casfs_algo_name(a));
		int n = 0;
		CHECK(casfs_label_list(s, count, &n) == 0 && n == 0, "label_list on the store");
		CHECK(casfs_blob_list(s, count, &n) == 0 && n == 0, "blob_list on the store");
		casfs_store_free(s);
	}
	fuzz_check_fds(fds);
	return 0;
}
