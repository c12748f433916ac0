/*
 * fuzz_label_file.c — label files as found on disk (SPEC §2): anything a
 * Theater runtime, another casfs or a careless user may have left in
 * labels/<name>.
 *
 * Once per process a scratch root gets three stores, each holding the blob
 * "hello\n": "s256" (sha256), "s1" (sha1) and "theater" (a bare Theater
 * directory: data/ and labels/, no .casfs/, hence sha1).
 *
 * Input: byte 0 chooses the store (bits 0-1), the label name (bits 2-4),
 * whether to overwrite the label afterwards with casfs_label_set (bit 5),
 * and whether labels/<name> is a symlink to a file holding the bytes
 * instead of a file (bit 6).  The rest is the file's content.
 *
 * Each run writes the file, then reads it back through casfs_label_get,
 * casfs_label_stat, casfs_label_list, casfs_label_readdir and casfs_fsck
 * (no repair), and checks them against the spec and against each other:
 *   - get gives a digest of the store's algorithm equal to the file's
 *     content trimmed of whitespace, or an error; never a digest built
 *     from part of the content;
 *   - an empty or all-whitespace file is "no label" (-ENOENT) everywhere:
 *     get, stat, list and readdir agree;
 *   - a planted symlink is never followed;
 *   - fsck counts exactly the damage get reports;
 *   - a garbage label can be replaced by casfs_label_set;
 *   - reading a Theater store does not write to it;
 *   - no descriptor is left open.
 */
#include "fuzz_common.h"

/* Label files larger than this may be refused with -EFBIG (labels.c). */
#define LABEL_FILE_LIMIT 4096

static const char *const HELLO_SHA1 = "f572d396fae9206628714fb2ce00f72e94f2258f";
static const char *const HELLO_SHA256 =
	"5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";

struct store_kind {
	const char *id;
	casfs_algo algo;
	bool theater; /* must stay without .casfs/: never written through casfs */
};

static const struct store_kind STORES[4] = {
	{ "s256", CASFS_SHA256, false },
	{ "s1", CASFS_SHA1, false },
	{ "theater", CASFS_SHA1, true },
	{ "s256", CASFS_SHA256, false },
};

/* Label names, with the parent directory a readdir looks at and the leaf
 * it should show. */
static const struct {
	const char *name, *dir, *leaf;
} NAMES[8] = {
	{ "x", "", "x" },
	{ "dir/x", "dir", "x" },
	{ "a/b/c/d", "a/b/c", "d" },
	{ "with space", "", "with space" },
	{ "\xc3\xbc" "ml", "", "\xc3\xbc" "ml" },
	{ "dir/.hidden", "dir", ".hidden" },
	{ "...", "", "..." },
	{ "tab\there", "", "tab\there" },
};

static casfs_root *root;
static const char *scratch;

static const char *hello(casfs_algo algo)
{
	return algo == CASFS_SHA1 ? HELLO_SHA1 : HELLO_SHA256;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	scratch = fuzz_scratch_dir("label-file");
	SETUP(casfs_root_open(&root, scratch, CASFS_ROOT_NOSYNC) == 0, "casfs_root_open");
	SETUP(casfs_store_create(root, "s256", CASFS_SHA256, NULL, 0) == 0, "create s256");
	SETUP(casfs_store_create(root, "s1", CASFS_SHA1, NULL, 0) == 0, "create s1");
	char path[4096];
	for (int i = 0; i < 2; i++) {
		casfs_store *s;
		char hex[CASFS_HEX_MAX];
		SETUP(casfs_store_open(&s, root, STORES[i].id) == 0, "open store");
		SETUP(casfs_blob_put(s, "hello\n", 6, hex) >= 0, "casfs_blob_put");
		SETUP(strcmp(hex, hello(STORES[i].algo)) == 0, "digest of hello");
		casfs_store_free(s);
	}
	/* A Theater store is just directories and files. */
	fuzz_mkdirs(scratch, "theater/data");
	fuzz_mkdirs(scratch, "theater/labels");
	snprintf(path, sizeof(path), "%s/theater/data/%s", scratch, HELLO_SHA1);
	SETUP(fuzz_write_file(path, "hello\n", 6) == 0, "theater blob");
	for (int i = 0; i < 3; i++)
		for (int j = 0; j < 8; j++)
			if (NAMES[j].dir[0]) {
				snprintf(path, sizeof(path), "%s/labels/%s", STORES[i].id, NAMES[j].dir);
				fuzz_mkdirs(scratch, path);
			}
	return 0;
}

/* What the spec says get must answer for a file holding buf[0..n). */
struct expect {
	int rc;                   /* 0, -ENOENT or -EINVAL */
	char hex[CASFS_HEX_MAX];  /* when rc == 0 */
};

static struct expect spec_label_file(casfs_algo algo, const uint8_t *buf, size_t n)
{
	struct expect e = { 0 };
	size_t a = 0, b = n;
	while (b > a && fuzz_is_ws(buf[b - 1]))
		b--;
	while (a < b && fuzz_is_ws(buf[a]))
		a++;
	size_t want = casfs_algo_hexlen(algo);
	if (a == b)
		e.rc = -ENOENT; /* Theater: an empty label file means "no label" */
	else if (b - a == want && fuzz_is_lower_hex((const char *)buf + a, want)) {
		memcpy(e.hex, buf + a, want);
		e.hex[want] = '\0';
	} else
		e.rc = -EINVAL;
	return e;
}

struct seen {
	const char *want;
	int hits, others;
};

static int on_name(const char *name, void *ud)
{
	struct seen *sn = ud;
	CHECK(name != NULL && casfs_label_check(name) == 0, "list gave an invalid name");
	if (!strcmp(name, sn->want))
		sn->hits++;
	else
		sn->others++;
	return 0;
}

static int on_dirent(const char *name, int is_dir, void *ud)
{
	struct seen *sn = ud;
	CHECK(name != NULL && name[0] && !strchr(name, '/'), "readdir gave a bad name");
	if (!strcmp(name, sn->want)) {
		CHECK(!is_dir, "the label file is shown as a directory");
		sn->hits++;
	}
	return 0;
}

struct fsck_seen {
	int bad, dangling, other;
};

static void on_report(enum casfs_fsck_kind kind, const char *name, const char *detail,
		      int repaired, void *ud)
{
	struct fsck_seen *fs = ud;
	CHECK(name != NULL && detail != NULL);
	CHECK(!repaired, "fsck without repair says it repaired %s", name);
	if (kind == CASFS_FSCK_BAD_LABEL)
		fs->bad++;
	else if (kind == CASFS_FSCK_DANGLING_LABEL)
		fs->dangling++;
	else
		fs->other++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t sel = size ? data[0] : 0;
	const uint8_t *content = size ? data + 1 : data;
	size_t n = size ? size - 1 : 0;
	const struct store_kind *sk = &STORES[sel & 3];
	int ni = (sel >> 2) & 7;
	const char *name = NAMES[ni].name;
	bool do_set = (sel & 0x20) && !sk->theater;
	bool as_symlink = (sel & 0x40) != 0;

	int fds = fuzz_count_fds();
	casfs_store *s;
	int rc = casfs_store_open(&s, root, sk->id);
	CHECK(rc == 0, "cannot open store %s: %d", sk->id, rc);
	casfs_algo algo = casfs_store_algo(s);
	CHECK(algo == sk->algo, "store %s has algorithm %d", sk->id, (int)algo);

	char path[4096], target[4096];
	snprintf(path, sizeof(path), "%s/%s/labels/%s", scratch, sk->id, name);
	if (as_symlink) {
		snprintf(target, sizeof(target), "%s/target", scratch);
		SETUP(fuzz_write_file(target, content, n) == 0, "symlink target");
		SETUP(symlink(target, path) == 0, "symlink");
	} else {
		SETUP(fuzz_write_file(path, content, n) == 0, "label file");
	}

	struct expect want = spec_label_file(algo, content, n);
	if (as_symlink)
		want.rc = -EINVAL; /* a planted symlink is never followed */

	/* get: exactly CASFS_HEX_MAX bytes on the heap, so ASan sees any
	 * write past the documented size. */
	char *hex = malloc(CASFS_HEX_MAX);
	SETUP(hex != NULL, "malloc");
	memset(hex, 'Z', CASFS_HEX_MAX);
	casfs_error_clear();
	int got = casfs_label_get(s, name, hex);
	fuzz_check_error_text();
	if (got == 0) {
		CHECK(casfs_digest_check(algo, hex) == 0,
		      "label_get returned 0 with '%.80s', not a %s digest", hex, casfs_algo_name(algo));
		CHECK(want.rc == 0,
		      "label_get accepted a file (%zu bytes) whose trimmed content is not one %s "
		      "digest; returned '%s'", n, casfs_algo_name(algo), hex);
		CHECK(!strcmp(hex, want.hex), "label_get returned '%s', the file holds '%s'", hex,
		      want.hex);
	} else if (!as_symlink && n > LABEL_FILE_LIMIT) {
		/* Over the size limit: may be refused whatever it holds. */
		CHECK(got == -EFBIG || got == want.rc,
		      "label_get of a %zu-byte file gave %d (expected %d or -EFBIG)", n, got, want.rc);
	} else {
		CHECK(got == want.rc, "label_get of a %zu-byte file gave %d, the spec says %d%s%s", n,
		      got, want.rc, want.rc == 0 ? " with " : "", want.rc == 0 ? want.hex : "");
	}
	if (got < 0)
		CHECK(casfs_error_last()[0] || got == -ENOENT, "error %d with no text", got);

	/* stat agrees with get. */
	casfs_label_info info;
	memset(&info, 0x5a, sizeof(info));
	int st = casfs_label_stat(s, name, &info);
	fuzz_check_error_text();
	CHECK(st == got, "label_stat gave %d, label_get %d", st, got);
	if (st == 0) {
		CHECK(!info.is_dir, "a label file reported as a directory");
		CHECK(!strcmp(info.digest, hex), "stat digest '%.70s' != get digest '%s'", info.digest,
		      hex);
	}

	/* list: a label get finds is listed; one get calls absent is not. */
	struct seen ls = { name, 0, 0 };
	rc = casfs_label_list(s, on_name, &ls);
	CHECK(rc == 0, "label_list failed: %d", rc);
	CHECK(ls.others == 0, "label_list shows %d labels that were never written", ls.others);
	CHECK(ls.hits <= 1, "label_list shows '%s' %d times", name, ls.hits);
	if (got == 0)
		CHECK(ls.hits == 1, "label_list omits a label that label_get reads");
	if (got == -ENOENT)
		CHECK(ls.hits == 0,
		      "label_list shows '%s', which label_get calls absent (-ENOENT: an empty or "
		      "all-whitespace label file is no label)", name);

	/* readdir of the label's directory, the same way. */
	struct seen rd = { NAMES[ni].leaf, 0, 0 };
	rc = casfs_label_readdir(s, NAMES[ni].dir, on_dirent, &rd);
	CHECK(rc == 0, "label_readdir('%s') failed: %d", NAMES[ni].dir, rc);
	CHECK(rd.hits <= 1);
	if (got == 0)
		CHECK(rd.hits == 1, "label_readdir omits a label that label_get reads");
	if (got == -ENOENT)
		CHECK(rd.hits == 0,
		      "label_readdir shows '%s', which label_get and label_stat call absent "
		      "(-ENOENT: an empty or all-whitespace label file is no label)", name);

	/* fsck, read-only: exactly the damage get sees. */
	struct fsck_seen fsn = { 0 };
	casfs_fsck_opts fo = { .repair = 0, .report = on_report, .ud = &fsn };
	casfs_fsck_result fr;
	memset(&fr, 0, sizeof(fr));
	rc = casfs_fsck(s, &fo, &fr);
	bool bad = !as_symlink && got != 0 && got != -ENOENT;
	bool dangling = got == 0 && strcmp(hex, hello(algo)) != 0;
	CHECK(rc == 0 || rc == 1, "fsck returned %d", rc);
	CHECK(fr.blobs_checked == 1 && fr.bad_blobs == 0 && fr.stray_files == 0,
	      "fsck: %llu blobs checked, %llu bad, %llu strays", (unsigned long long)fr.blobs_checked,
	      (unsigned long long)fr.bad_blobs, (unsigned long long)fr.stray_files);
	CHECK(fr.bad_labels == (bad ? 1u : 0u), "fsck counts %llu bad labels, get gave %d",
	      (unsigned long long)fr.bad_labels, got);
	CHECK(fr.dangling_labels == (dangling ? 1u : 0u), "fsck counts %llu dangling labels",
	      (unsigned long long)fr.dangling_labels);
	CHECK(fsn.bad == (int)fr.bad_labels && fsn.dangling == (int)fr.dangling_labels &&
		      fsn.other == 0, "fsck reports disagree with its counts");
	CHECK(rc == ((bad || dangling) ? 1 : 0), "fsck returned %d", rc);
	CHECK(fr.repaired == 0, "fsck repaired without being asked");

	/* Whatever was there, a plain file label can be overwritten. */
	if (do_set && !as_symlink) {
		char *old = malloc(CASFS_HEX_MAX);
		SETUP(old != NULL, "malloc");
		memset(old, 'Z', CASFS_HEX_MAX);
		rc = casfs_label_set(s, name, hello(algo), NULL, old);
		CHECK(rc == 0, "label_set over this label file failed: %d", rc);
		CHECK(!strcmp(old, got == 0 ? hex : ""), "label_set old digest '%.70s', get gave %d",
		      old, got);
		rc = casfs_label_get(s, name, hex);
		CHECK(rc == 0 && !strcmp(hex, hello(algo)), "label_set did not take: %d", rc);
		free(old);
	}
	free(hex);

	unlink(path);
	casfs_store_free(s);
	fuzz_check_fds(fds);
	if (sk->theater) {
		/* Reading a Theater store leaves it as it was (SPEC §1, §2). */
		struct stat sb;
		snprintf(path, sizeof(path), "%s/theater/.casfs", scratch);
		CHECK(lstat(path, &sb) < 0 && errno == ENOENT,
		      "reading a Theater store created its .casfs/");
	}
	return 0;
}
