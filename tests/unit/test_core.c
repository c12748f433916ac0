/*
 * test_core.c — every operation of libcasfs and its error paths, on a
 * scratch root: names, stores, blobs, writers, labels, journal, gc, fsck,
 * stats.
 *
 * The same checks run against either backend, chosen by the argument:
 *
 *   test-core [dir]    a scratch directory (the default);
 *   test-core rados    $CASFS_TEST_RADOS_ROOT (rados:POOL or
 *                      rados:POOL/NAMESPACE) in a fresh namespace per run,
 *                      ceph_conf from $CEPH_CONF, cache_dir in a scratch
 *                      directory.  No cluster is a TAP "Bail out!", never a
 *                      skip; start one with
 *                        tests/ceph/cluster start DIR --pool casfs-unit
 *
 * Checks that look at the directory layout (files under data/, labels/,
 * .casfs/) run only when backend_is_dir; where the rados backend has a
 * counterpart, it is checked through the API, or, to set up what cannot be
 * made through the API (an old blob, a corrupted blob, a stray object), by
 * touching the objects of backend_rados.c's layout with librados.
 */
#include "tap.h"

#include <pthread.h>
#include <rados/librados.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/wait.h>

static int backend_is_dir = 1;
/* Named staging files instead of anonymous ones (backend_dir.c). */
void casfs__stage_named(_Bool on);
/* dir: the root directory.  rados: NULL (see rados_spec). */
static char *root_path;
/* A local scratch directory for files the tests read from (dir: the root
 * itself, as always; rados: holds the cache_dir too). */
static char *scratch_path;

/* rados: the root spec, its pool and namespace, and a client of our own
 * to reach the objects behind the API. */
static char *rados_spec, *rados_pool, *rados_ns;
static rados_t poke_cl;
static rados_ioctx_t poke_io;
static char *rados_cache;
static const char *rados_opts[4];

static int64_t casfs__test_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
static casfs_root *root;

static const char *sha256_hello = /* sha256("hello\n") */
	"5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
static const char *sha1_hello = /* sha1("hello\n") */
	"f572d396fae9206628714fb2ce00f72e94f2258f";

static void path_of(char *out, size_t n, const char *store, const char *rel)
{
	snprintf(out, n, "%s/%s/%s", root_path, store, rel);
}

static int count_cb(const char *name, void *ud)
{
	(void)name;
	(*(int *)ud)++;
	return 0;
}

static int journal_grep_cb(const char *line, void *ud)
{
	const char **needles = ud;
	for (int i = 0; needles[i]; i++)
		if (!strstr(line, needles[i]))
			return 0;
	return 1; /* found: stop */
}

/* 1 if some journal line contains every needle. */
static int journal_has(casfs_store *s, const char *a, const char *b, const char *c)
{
	const char *needles[] = { a, b, c, NULL };
	if (!b)
		needles[1] = NULL;
	else if (!c)
		needles[2] = NULL;
	return casfs_journal_read(s, journal_grep_cb, needles) == 1;
}

/* ---- rados: the objects behind a store (layout of backend_rados.c) ---- */

/* poke_io, set to the namespace of a store ("NS/ID"). */
static rados_ioctx_t store_io(const char *store)
{
	char ns[1024];
	snprintf(ns, sizeof(ns), "%s/%s", rados_ns, store);
	rados_ioctx_set_namespace(poke_io, ns);
	return poke_io;
}

/* Makes a blob look stored long ago (as utimensat to 1000 s on a dir). */
static int rados_age_blob(const char *store, const char *hex)
{
	char oid[CASFS_HEX_MAX + 8], v[24];
	snprintf(oid, sizeof(oid), "b.%s", hex);
	snprintf(v, sizeof(v), "%020lld", 1000LL * 1000000000LL);
	return rados_setxattr(store_io(store), oid, "casfs.fresh", v, strlen(v));
}

/* Overwrites the start of a blob's head object (size unchanged). */
static int rados_corrupt_blob(const char *store, const char *hex, const char *bytes)
{
	char oid[CASFS_HEX_MAX + 8];
	snprintf(oid, sizeof(oid), "b.%s", hex);
	return rados_write(store_io(store), oid, bytes, strlen(bytes), 0);
}

/* Objects of a store whose name starts with prefix; -1 on error. */
static int rados_count_objects(const char *store, const char *prefix)
{
	rados_list_ctx_t ctx;
	if (rados_nobjects_list_open(store_io(store), &ctx) < 0)
		return -1;
	int n = 0;
	const char *e;
	while (rados_nobjects_list_next(ctx, &e, NULL, NULL) == 0)
		n += strncmp(e, prefix, strlen(prefix)) == 0;
	rados_nobjects_list_close(ctx);
	return n;
}

/* Keys in the omap of one object of a store; -1 on error. */
static int rados_count_omap(const char *store, const char *obj)
{
	rados_read_op_t op = rados_create_read_op();
	rados_omap_iter_t it = NULL;
	unsigned char more = 0;
	int prval = 0, n = -1;
	rados_read_op_omap_get_keys2(op, "", 10000, &it, &more, &prval);
	int rc = rados_read_op_operate(op, store_io(store), obj, 0);
	if (rc == 0 && prval == 0) {
		char *k, *v;
		size_t kl, vl;
		n = 0;
		while (rados_omap_get_next2(it, &k, &v, &kl, &vl) == 0 && k)
			n++;
	}
	if (it) /* made with the op: ended whatever the outcome */
		rados_omap_get_end(it);
	rados_release_read_op(op);
	return n;
}

static void test_names(void)
{
	IS(casfs_id_check("abc"), 0, "plain id ok");
	IS(casfs_id_check("0b8e5f1c-2c1a-4c55-9f0e-123456789abc"), 0, "uuid id ok");
	IS(casfs_id_check(""), -EINVAL, "empty id refused");
	IS(casfs_id_check("."), -EINVAL, "'.' refused");
	IS(casfs_id_check(".."), -EINVAL, "'..' refused");
	IS(casfs_id_check(".hidden"), -EINVAL, "leading dot refused");
	IS(casfs_id_check("a/b"), -EINVAL, "slash refused");
	char longid[300];
	memset(longid, 'x', 256);
	longid[256] = '\0';
	IS(casfs_id_check(longid), -ENAMETOOLONG, "256-byte id refused");
	longid[255] = '\0';
	IS(casfs_id_check(longid), 0, "255-byte id ok");

	IS(casfs_label_check("a"), 0, "label ok");
	IS(casfs_label_check("a/b/c"), 0, "nested label ok");
	IS(casfs_label_check(".x"), 0, "dot-file label ok");
	IS(casfs_label_check(""), -EINVAL, "empty label refused");
	IS(casfs_label_check("a//b"), -EINVAL, "empty component refused");
	IS(casfs_label_check("/a"), -EINVAL, "leading slash refused");
	IS(casfs_label_check("a/"), -EINVAL, "trailing slash refused");
	IS(casfs_label_check("../x"), -EINVAL, "'..' component refused");
	IS(casfs_label_check("a/./b"), -EINVAL, "'.' component refused");
	char comp[300];
	memset(comp, 'c', 256);
	comp[256] = '\0';
	IS(casfs_label_check(comp), -ENAMETOOLONG, "256-byte component refused");
	static char big[5000];
	for (int i = 0; i < 4096; i++)
		big[i] = (i % 100 == 99) ? '/' : 'b';
	big[4096] = '\0';
	IS(casfs_label_check(big), -ENAMETOOLONG, "4096-byte label refused");
	big[4095] = '\0';
	IS(casfs_label_check(big), 0, "4095-byte label ok");

	IS(casfs_digest_check(CASFS_SHA256, sha256_hello), 0, "sha256 digest ok");
	IS(casfs_digest_check(CASFS_SHA1, sha1_hello), 0, "sha1 digest ok");
	IS(casfs_digest_check(CASFS_SHA256, sha1_hello), -EINVAL, "sha1 digest refused in sha256 store");
	char upper[65];
	strcpy(upper, sha256_hello);
	upper[0] = 'A';
	upper[1] = 'B';
	IS(casfs_digest_check(CASFS_SHA256, upper), -EINVAL, "upper-case digest refused");
	IS(casfs_digest_check(CASFS_SHA256, "zz"), -EINVAL, "short digest refused");
	OK(strstr(casfs_error_last(), "digest") != NULL, "error message names the digest");
	casfs_algo a;
	IS(casfs_algo_parse(&a, "md5"), -EINVAL, "unknown algorithm refused");
}

static void test_stores(void)
{
	char id[CASFS_ID_MAX + 1];
	IS(casfs_store_create(root, NULL, CASFS_SHA256, id, sizeof(id)), 0, "create store with fresh uuid");
	IS(strlen(id), 36, "uuid id is 36 characters");
	IS(casfs_store_create(root, "named", CASFS_SHA1, id, sizeof(id)), 0, "create named sha1 store");
	STR_IS(id, "named", "given id used");
	IS(casfs_store_create(root, "named", CASFS_SHA256, NULL, 0), -EEXIST, "existing store refused");
	IS(casfs_store_create(root, "../evil", CASFS_SHA256, NULL, 0), -EINVAL, "bad id refused");
	int n = 0;
	IS(casfs_store_list(root, count_cb, &n), 0, "list stores");
	IS(n, 2, "two stores listed");

	casfs_store *s;
	IS(casfs_store_open(&s, root, "named"), 0, "open store");
	IS(casfs_store_algo(s), CASFS_SHA1, "algorithm recorded in .casfs");
	if (backend_is_dir) {
		char cfg[4096], p[4096];
		path_of(p, sizeof(p), "named", ".casfs/config");
		OK(read_file(p, cfg, sizeof(cfg)) > 0 && strstr(cfg, "algo=sha1"), "config says sha1");
	} else {
		/* Recorded in the cluster: another client sees it. */
		casfs_root *r2 = NULL;
		casfs_store *s2 = NULL;
		IS(casfs_root_open_opts(&r2, rados_spec, 0, rados_opts), 0, "second root handle on the same pool");
		IS(r2 ? casfs_store_open(&s2, r2, "named") : -1, 0, "store opened through the second handle");
		IS(s2 ? (int)casfs_store_algo(s2) : -1, CASFS_SHA1,
		   "algorithm recorded in the cluster (seen by the second handle)");
		casfs_store_free(s2);
		casfs_root_free(r2);
	}
	casfs_store_free(s);
	IS(casfs_store_open(&s, root, "nope"), -ENOENT, "absent store is ENOENT");
	OK(strstr(casfs_error_last(), "nope") != NULL, "message names the store");

	/* Remove: empty yes, non-empty no. */
	IS(casfs_store_create(root, "tmp", CASFS_SHA256, NULL, 0), 0, "create tmp store");
	IS(casfs_store_open(&s, root, "tmp"), 0, "open tmp");
	char hex[CASFS_HEX_MAX];
	IS(casfs_blob_put(s, "x", 1, hex), 0, "put into tmp");
	IS(casfs_store_remove(root, "tmp"), -ENOTEMPTY, "non-empty store not removed");
	casfs_gc_opts go = { .grace_seconds = 0 };
	IS(casfs_gc(s, &go, NULL), 0, "gc empties tmp");
	casfs_store_free(s);
	IS(casfs_store_remove(root, "tmp"), 0, "empty store removed");
	IS(casfs_store_open(&s, root, "tmp"), -ENOENT, "removed store is gone");

	/* No debris of creation in the root. */
	n = 0;
	casfs_store_list(root, count_cb, &n);
	IS(n, 2, "still two stores");
	if (backend_is_dir)
		IS(count_entries(root_path), count_entries(root_path), "root listing stable");
}

/* Writes a buffer into a pipe in pieces, then closes it. */
struct pipe_feed {
	int fd;
	const unsigned char *data;
	size_t len;
};

static void *pipe_feeder(void *arg)
{
	struct pipe_feed *f = arg;
	for (size_t off = 0; off < f->len;) {
		ssize_t w = write(f->fd, f->data + off, f->len - off < 70000 ? f->len - off : 70000);
		if (w <= 0)
			break;
		off += (size_t)w;
	}
	close(f->fd);
	return NULL;
}

static void test_blobs(casfs_store *s)
{
	char hex[CASFS_HEX_MAX], p[4096], buf[256];
	IS(casfs_blob_put(s, "hello\n", 6, hex), 0, "put new blob returns 0");
	STR_IS(hex, sha256_hello, "digest is sha256 of content");
	IS(casfs_blob_put(s, "hello\n", 6, hex), 1, "put same content returns 1 (dedup)");
	IS(casfs_blob_exists(s, sha256_hello), 1, "exists");
	IS(casfs_blob_exists(s, "0000000000000000000000000000000000000000000000000000000000000000"), 0,
	   "absent digest does not exist");
	IS(casfs_blob_exists(s, "nothex"), -EINVAL, "bad digest is EINVAL");
	struct stat sb;
	if (backend_is_dir) {
		path_of(p, sizeof(p), casfs_store_id(s), "data/");
		strcat(p, sha256_hello);
		OK(stat(p, &sb) == 0 && (sb.st_mode & 0777) == 0444, "blob file is 0444");
		OK(read_file(p, buf, sizeof(buf)) == 6 && !strcmp(buf, "hello\n"), "blob file holds raw content");
	} else {
		IS(rados_count_objects(casfs_store_id(s), "b."), 1, "one head object for the blob");
	}

	uint64_t size = 0;
	IS(casfs_blob_size(s, sha256_hello, &size), 0, "size of blob");
	IS(size, 6, "size is 6");
	int fd = -1;
	IS(casfs_blob_open(s, sha256_hello, &fd), 0, "open blob");
	OK(fd >= 0 && read(fd, buf, sizeof(buf)) == 6 && !memcmp(buf, "hello\n", 6), "read blob via fd");
	if (fd >= 0)
		close(fd);
	IS(casfs_blob_open(s, "0000000000000000000000000000000000000000000000000000000000000000", &fd),
	   -ENOENT, "open absent blob is ENOENT");

	/* Freshening: an old blob stored again gets a new mtime. */
	if (backend_is_dir) {
		struct timespec old[2] = { { 1000, 0 }, { 1000, 0 } };
		utimensat(AT_FDCWD, p, old, 0);
		IS(casfs_blob_put(s, "hello\n", 6, hex), 1, "store again");
		OK(stat(p, &sb) == 0 && sb.st_mtime > 100000, "storing again freshened the blob");
	} else {
		int64_t mt = 0;
		IS(rados_age_blob(casfs_store_id(s), sha256_hello), 0, "rados: make the blob old");
		IS(casfs_blob_stat(s, sha256_hello, NULL, &mt), 0, "stat the old blob");
		IS(mt, 1000LL * 1000000000LL, "blob_stat shows its age");
		IS(casfs_blob_put(s, "hello\n", 6, hex), 1, "store again");
		IS(casfs_blob_stat(s, sha256_hello, &size, &mt), 0, "stat after storing again");
		OK(mt > 100000LL * 1000000000LL && mt <= casfs__test_now(), "storing again freshened the blob (%lld)",
		   (long long)mt);
	}

	/* put_fd from a pipe, with a large input for the hashing thread. */
	size_t big = (5u << 20) + 12345;
	unsigned char *data = malloc(big);
	for (size_t i = 0; i < big; i++)
		data[i] = (unsigned char)(i * 2654435761u >> 13);
	char want[CASFS_HEX_MAX];
	{
		/* Reference digest through a plain writer in small steps. */
		casfs_writer *w;
		IS(casfs_writer_open(&w, s), 0, "writer open");
		for (size_t off = 0; off < big; off += 4000)
			casfs_writer_write(w, data + off, big - off < 4000 ? big - off : 4000);
		IS(casfs_writer_size(w), big, "writer size");
		IS(casfs_writer_commit(w, want), 0, "writer commit new");
		casfs_writer_free(w);
	}
	int pfd[2];
	OK(pipe(pfd) == 0, "pipe");
	/* The pipe is fed by a thread, not a child process: librados is not
	 * fork-safe. */
	struct pipe_feed feed = { pfd[1], data, big };
	pthread_t feeder;
	pthread_create(&feeder, NULL, pipe_feeder, &feed);
	IS(casfs_blob_put_fd(s, pfd[0], hex, NULL, NULL), 1, "put_fd of existing content returns 1");
	close(pfd[0]);
	pthread_join(feeder, NULL);
	STR_IS(hex, want, "pipelined put_fd digest matches writer digest");
	IS(casfs_blob_size(s, hex, &size), 0, "size of big blob");
	IS(size, big, "big blob size");
	/* Partial reads: the part around an offset (a remote backend fetches
	 * only that part; a local one gives the whole blob). */
	{
		static const uint64_t offs[] = { 0, 4u << 20, (5u << 20) + 12344 };
		int good = 0;
		for (int i = 0; i < 3; i++) {
			int pfd2 = -1;
			uint64_t start = 0, len = 0;
			unsigned char got[64];
			uint64_t off = offs[i];
			size_t wn = big - off < sizeof(got) ? big - off : sizeof(got);
			if (casfs_blob_open_at(s, hex, off, &pfd2, &start, &len) == 0 && start <= off &&
			    off < start + len && start + len <= big &&
			    pread(pfd2, got, wn, (off_t)(off - start)) == (ssize_t)wn &&
			    !memcmp(got, data + off, wn))
				good++;
			if (pfd2 >= 0)
				close(pfd2);
		}
		IS(good, 3, "blob_open_at: the right bytes around three offsets");
		int pfd2 = -1;
		uint64_t start, len;
		IS(casfs_blob_open_at(s, hex, big, &pfd2, &start, &len), -ENXIO, "blob_open_at at the end is ENXIO");
	}
	free(data);

	/* Empty content. */
	IS(casfs_blob_put(s, "", 0, hex), 0, "put empty blob");
	STR_IS(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "empty digest");

	int n = 0;
	IS(casfs_blob_list(s, count_cb, &n), 0, "list blobs");
	IS(n, 3, "three blobs listed");
	uint64_t total = 0;
	IS(casfs_store_total_size(s, &total), 0, "total size");
	IS(total, 6 + big, "total size adds up");

	/* A stray file in data/ is not listed as content. */
	if (backend_is_dir) {
		path_of(p, sizeof(p), casfs_store_id(s), "data/not-a-digest");
		write_file(p, "x", 1);
		n = 0;
		casfs_blob_list(s, count_cb, &n);
		IS(n, 3, "stray file not listed");
		unlink(p);
	} else {
		rados_ioctx_t io = store_io(casfs_store_id(s));
		IS(rados_write_full(io, "b.not-a-digest", "x", 1), 0, "rados: plant a stray head object");
		n = 0;
		casfs_blob_list(s, count_cb, &n);
		IS(n, 3, "stray object not listed");
		rados_remove(store_io(casfs_store_id(s)), "b.not-a-digest");
	}
	OK(journal_has(s, "\"op\":\"store\"", sha256_hello, "\"outcome\":\"ok\""), "journal records store");

	/* A large regular file takes the kernel-copy path (copy_file_range
	 * with a hashing thread); its digest must match a plain writer's. */
	{
		size_t n9 = (9u << 20) + 777;
		unsigned char *d9 = malloc(n9);
		for (size_t i = 0; i < n9; i++)
			d9[i] = (unsigned char)((i * 7919u) >> 5);
		char f9[4096], w9[CASFS_HEX_MAX], r9[CASFS_HEX_MAX];
		snprintf(f9, sizeof(f9), "%s/large-source", scratch_path);
		write_file(f9, d9, n9);
		casfs_writer *pw;
		casfs_writer_open(&pw, s);
		casfs_writer_write(pw, d9, n9);
		IS(casfs_writer_commit(pw, w9), 0, "reference digest of the large file");
		casfs_writer_free(pw);
		int ffd = open(f9, O_RDONLY);
		OK(lseek(ffd, 0, SEEK_SET) == 0, "source at offset 0");
		IS(casfs_blob_put_fd(s, ffd, r9, NULL, NULL), 1, "put_fd of a large regular file (already stored)");
		STR_IS(r9, w9, "kernel-copy path digest");
		OK(lseek(ffd, 0, SEEK_CUR) == (off_t)n9, "source offset left at its end");
		close(ffd);
		/* And into a fresh store, so the copy is really published. */
		casfs_store *s2;
		char id2[CASFS_ID_MAX + 1];
		casfs_store_create(root, NULL, CASFS_SHA256, id2, sizeof(id2));
		casfs_store_open(&s2, root, id2);
		ffd = open(f9, O_RDONLY);
		IS(casfs_blob_put_fd(s2, ffd, r9, NULL, NULL), 0, "put_fd of a large regular file (new)");
		close(ffd);
		int bfd;
		IS(casfs_blob_open(s2, r9, &bfd), 0, "open the copied blob");
		int devnull = open("/dev/null", O_WRONLY);
		IS(casfs_blob_verify_copy(s2, r9, bfd, devnull), 0, "the copied blob hashes to its name");
		close(devnull);
		close(bfd);
		casfs_gc_opts go0 = { .grace_seconds = 0 };
		casfs_gc(s2, &go0, NULL);
		casfs_store_free(s2);
		IS(casfs_store_remove(root, id2), 0, "scratch store removed");
		unlink(f9);
		free(d9);
	}

}

/* Long in-order streams are hashed on a thread (from 4 MiB on): the digest
 * must match a blob stored in one piece, also when writes arrive slightly
 * out of order, after a truncation back to zero, and for a commit retried
 * on the same writer. */
static void test_stream_hasher(casfs_store *s)
{
	size_t n = 11u << 20;
	unsigned char *buf = malloc(n);
	for (size_t i = 0; i < n; i++)
		buf[i] = (unsigned char)(i * 2654435761u >> 13);
	char ref[CASFS_HEX_MAX], hex[CASFS_HEX_MAX];
	IS(casfs_blob_put(s, buf, n, ref), 0, "reference blob of 11 MiB");
	casfs_writer *w;
	IS(casfs_writer_open(&w, s), 0, "stream writer open");
	size_t piece = 1u << 20;
	for (size_t off = 0; off < n; off += 2 * piece) {
		/* the second MiB of each pair first: held ahead, then caught up */
		if (off + piece < n)
			casfs_writer_pwrite(w, buf + off + piece, n - off - piece < piece ? n - off - piece : piece,
					    off + piece);
		casfs_writer_pwrite(w, buf + off, piece, off);
	}
	IS(casfs_writer_size(w), (uint64_t)n, "all 11 MiB staged");
	IS(casfs_writer_commit(w, hex), 1, "commit of a streamed version (its content was stored already)");
	STR_IS(hex, ref, "digest of the streamed version is the content's");
	IS(casfs_writer_truncate(w, 0), 0, "truncate to zero");
	for (size_t off = 0; off < n; off += piece)
		casfs_writer_pwrite(w, buf + off, n - off < piece ? n - off : piece, off);
	IS(casfs_writer_commit(w, hex), 1, "commit after truncating and streaming again");
	STR_IS(hex, ref, "same digest the second time");
	casfs_writer_free(w);
	free(buf);

	/* Longer than the hashing thread may lag behind (BG_LAG, 16 MiB):
	 * the writes wait for it and the digest still comes out right. */
	n = 40u << 20;
	buf = malloc(n);
	for (size_t i = 0; i < n; i++)
		buf[i] = (unsigned char)(i * 2246822519u >> 11);
	IS(casfs_blob_put(s, buf, n, ref), 0, "reference blob of 40 MiB");
	IS(casfs_writer_open(&w, s), 0, "stream writer open");
	int bad = 0;
	for (size_t off = 0; off < n; off += piece)
		bad += casfs_writer_pwrite(w, buf + off, piece, off) != 0;
	IS(bad, 0, "40 MiB streamed in order, past the lag bound");
	IS(casfs_writer_commit(w, hex), 1, "commit of the long stream");
	STR_IS(hex, ref, "digest of the long stream is the content's");
	casfs_writer_free(w);
	free(buf);
}

static void test_writer(casfs_store *s)
{
	casfs_writer *w;
	char hex[CASFS_HEX_MAX], ref[CASFS_HEX_MAX];
	IS(casfs_writer_open(&w, s), 0, "writer open");
	casfs_writer_write(w, "hello world", 11);
	IS(casfs_writer_pwrite(w, "HELLO", 5, 0), 0, "pwrite over the start");
	IS(casfs_writer_truncate(w, 8), 0, "truncate");
	char back[32] = "";
	OK(pread(casfs_writer_fd(w), back, sizeof(back), 0) == 8 && !memcmp(back, "HELLO wo", 8),
	   "read back staged content");
	IS(casfs_writer_commit(w, hex), 0, "commit after random writes");
	casfs_blob_put(s, "HELLO wo", 8, ref);
	STR_IS(hex, ref, "random-write digest recomputed at commit");
	/* Writer keeps going: new version from the committed content. */
	IS(casfs_writer_write(w, "rld", 3), 0, "write after commit");
	IS(casfs_writer_commit(w, hex), 0, "second commit");
	casfs_blob_put(s, "HELLO world", 11, ref);
	STR_IS(hex, ref, "second version = committed content + appended bytes");
	IS(casfs_writer_commit(w, hex), 1, "commit with nothing new returns 1");
	casfs_writer_free(w);

	/* Writes arriving out of order (as from a multithreaded filesystem)
	 * give the same digest as in order, with overlaps and gaps. */
	static char blk[8][1000];
	for (int i = 0; i < 8; i++)
		memset(blk[i], 'a' + i, sizeof(blk[i]));
	casfs_writer *seq;
	casfs_writer_open(&seq, s);
	for (int i = 0; i < 8; i++)
		casfs_writer_write(seq, blk[i], sizeof(blk[i]));
	IS(casfs_writer_commit(seq, ref), 0, "sequential reference");
	casfs_writer_free(seq);
	static const int orders[3][8] = { { 0, 2, 1, 4, 3, 6, 5, 7 }, { 7, 6, 5, 4, 3, 2, 1, 0 }, { 1, 0, 3, 2, 2, 5, 4, 7 } };
	for (int o = 0; o < 3; o++) {
		casfs_writer *ow;
		casfs_writer_open(&ow, s);
		for (int i = 0; i < 8; i++)
			casfs_writer_pwrite(ow, blk[orders[o][i]], sizeof(blk[0]), (uint64_t)orders[o][i] * sizeof(blk[0]));
		if (o == 2) /* block 6 was never written above */
			casfs_writer_pwrite(ow, blk[6], sizeof(blk[0]), 6 * sizeof(blk[0]));
		IS(casfs_writer_commit(ow, hex), 1, "commit out-of-order writes (same content: already stored)");
		STR_IS(hex, ref, "out-of-order digest equals the sequential one");
		casfs_writer_free(ow);
	}

	/* An abandoned writer leaves nothing behind, whether it stages in an
	 * anonymous file (O_TMPFILE, where the filesystem has them) or in a
	 * named one (elsewhere). */
	char p[4096];
	int nblobs = 0, nblobs2 = 0;
	casfs_blob_list(s, count_cb, &nblobs);
	if (backend_is_dir)
		path_of(p, sizeof(p), casfs_store_id(s), ".casfs/staging");
	for (int named = 0; named < 2; named++) {
		casfs__stage_named(named);
		IS(casfs_writer_open(&w, s), 0, named ? "writer open (named staging)" : "writer open (anonymous staging)");
		casfs_writer_write(w, "abandoned", 9);
		if (backend_is_dir)
			IS(count_entries(p), named, "staging files in staging/ while writing");
		casfs_writer_free(w);
		if (backend_is_dir)
			IS(count_entries(p), 0, "abandoned writer's staging file removed");
		casfs_blob_list(s, count_cb, &nblobs2);
		IS(nblobs2, nblobs, "abandoned writer stored no blob");
		nblobs2 = 0;
		/* Both kinds publish. */
		char body[32], got[CASFS_HEX_MAX];
		int n = snprintf(body, sizeof(body), "staged %s", named ? "named" : "anonymous");
		IS(casfs_writer_open(&w, s), 0, "writer open");
		casfs_writer_write(w, body, (size_t)n);
		IS(casfs_writer_commit(w, got), 0, "a new blob committed");
		casfs_writer_free(w);
		casfs_blob_put(s, body, (size_t)n, ref);
		STR_IS(got, ref, "with its digest");
		IS(casfs_blob_exists(s, got), 1, "and stored");
		nblobs++;
		if (backend_is_dir)
			IS(count_entries(p), 0, "nothing left in staging/");
	}
	casfs__stage_named(0);

	/* commit_many */
	casfs_writer *ws[20];
	char hexes[20][CASFS_HEX_MAX];
	int rets[20];
	for (int i = 0; i < 20; i++) {
		char c[32];
		int len = snprintf(c, sizeof(c), "many-%d", i);
		casfs_writer_open(&ws[i], s);
		casfs_writer_write(ws[i], c, (size_t)len);
	}
	IS(casfs_writer_commit_many(ws, 20, hexes, rets), 0, "commit_many");
	int good = 0;
	for (int i = 0; i < 20; i++) {
		char c[32];
		int len = snprintf(c, sizeof(c), "many-%d", i);
		casfs_blob_put(s, c, (size_t)len, ref);
		good += rets[i] == 0 && !strcmp(hexes[i], ref) && casfs_blob_exists(s, ref) == 1;
		casfs_writer_free(ws[i]);
	}
	IS(good, 20, "every batch member stored with the right digest");
	if (backend_is_dir)
		IS(count_entries(p), 0, "no staging left after commit_many");
}

static void test_labels(casfs_store *s)
{
	char hex[CASFS_HEX_MAX], old[CASFS_HEX_MAX], a[CASFS_HEX_MAX], b[CASFS_HEX_MAX], p[4096], buf[256];
	const char *absent = "1111111111111111111111111111111111111111111111111111111111111111";
	casfs_blob_put(s, "content a", 9, a);
	casfs_blob_put(s, "content b", 9, b);
	IS(casfs_label_set(s, "x", a, NULL, old), 0, "set label");
	STR_IS(old, "", "no previous digest");
	IS(casfs_label_get(s, "x", hex), 0, "get label");
	STR_IS(hex, a, "label points at a");
	if (backend_is_dir) {
		path_of(p, sizeof(p), casfs_store_id(s), "labels/x");
		OK(read_file(p, buf, sizeof(buf)) == 64 && !strcmp(buf, a), "label file is the digest, no newline");
	} else {
		casfs_label_info li;
		IS(casfs_label_stat(s, "x", &li), 0, "stat label");
		OK(!li.is_dir && !strcmp(li.digest, a), "label stat gives the digest");
		int nl = 0;
		IS(casfs_label_list(s, count_cb, &nl), 0, "list labels");
		IS(nl, 1, "the label is listed");
	}

	IS(casfs_label_set(s, "y", absent, NULL, NULL), -ENOENT, "label to absent blob refused");
	IS(casfs_label_get(s, "y", hex), -ENOENT, "refused label not created");
	IS(casfs_label_set(s, "../y", a, NULL, NULL), -EINVAL, "bad label name refused");
	IS(casfs_label_set(s, "y", "ABC", NULL, NULL), -EINVAL, "bad digest refused");
	OK(journal_has(s, "\"label\":\"y\"", "\"outcome\":\"error\"", "ENOENT"), "journal records the failure");

	/* compare-and-swap */
	IS(casfs_label_set(s, "x", b, b, NULL), -ESTALE, "CAS with wrong expectation fails");
	IS(casfs_label_get(s, "x", hex), 0, "get after failed CAS");
	STR_IS(hex, a, "failed CAS changed nothing");
	IS(casfs_label_set(s, "x", b, a, old), 0, "CAS with right expectation");
	STR_IS(old, a, "old digest reported");
	OK(journal_has(s, "\"label\":\"x\"", b, a), "journal has old and new digest");
	IS(casfs_label_set(s, "x", a, "", NULL), -EEXIST, "create-only on existing label fails");
	IS(casfs_label_set(s, "new", a, "", NULL), 0, "create-only on new label");
	IS(casfs_label_set(s, "nolabel", a, CASFS_LABEL_EXISTS, NULL), -ENOENT, "replace needs existing label");
	IS(casfs_label_remove(s, "x", a, NULL), -ESTALE, "remove-from-label with wrong digest fails");
	IS(casfs_label_get(s, "x", hex), 0, "label survives");
	IS(casfs_label_remove(s, "x", b, old), 0, "remove-from-label with right digest");
	STR_IS(old, b, "removed digest reported");
	IS(casfs_label_get(s, "x", hex), -ENOENT, "label gone");
	IS(casfs_label_remove(s, "x", NULL, NULL), -ENOENT, "remove absent label is ENOENT");

	/* Nested labels, rename, list. */
	IS(casfs_label_set(s, "dir/sub/leaf", a, NULL, NULL), 0, "nested label");
	IS(casfs_label_get(s, "dir/sub/leaf", hex), 0, "get nested");
	IS(casfs_label_set(s, "dir", a, NULL, NULL), -EISDIR, "label over a label directory refused");
	IS(casfs_label_set(s, "new/x", a, NULL, NULL), -ENOTDIR, "label under a label file refused");
	IS(casfs_label_rename(s, "dir/sub/leaf", "moved"), 0, "rename label");
	IS(casfs_label_get(s, "moved", hex), 0, "renamed label readable");
	IS(casfs_label_get(s, "dir/sub/leaf", hex), -ENOENT, "old name gone");
	IS(casfs_label_rename(s, "ghost", "z"), -ENOENT, "rename of absent label");
	int n = 0;
	IS(casfs_label_list(s, count_cb, &n), 0, "list labels");
	IS(n, 2, "two labels (new, moved)");

	/* Theater rules when reading: trailing whitespace ok, empty = none.
	 * (Label files planted by hand: the directory layout only.) */
	if (backend_is_dir) {
		path_of(p, sizeof(p), casfs_store_id(s), "labels/ws");
		char withnl[80];
		snprintf(withnl, sizeof(withnl), "%s \n", a);
		write_file(p, withnl, strlen(withnl));
		IS(casfs_label_get(s, "ws", hex), 0, "label with trailing whitespace read");
		STR_IS(hex, a, "trimmed digest");
		path_of(p, sizeof(p), casfs_store_id(s), "labels/empty");
		write_file(p, "", 0);
		IS(casfs_label_get(s, "empty", hex), -ENOENT, "empty label file is no label");
		n = 0;
		casfs_label_list(s, count_cb, &n);
		IS(n, 3, "empty label not listed");
		path_of(p, sizeof(p), casfs_store_id(s), "labels/garbage");
		write_file(p, "not a digest", 12);
		IS(casfs_label_get(s, "garbage", hex), -EINVAL, "garbage label is EINVAL");
		static char huge[100000];
		memset(huge, 'a', sizeof(huge));
		path_of(p, sizeof(p), casfs_store_id(s), "labels/huge");
		write_file(p, huge, sizeof(huge));
		IS(casfs_label_get(s, "huge", hex), -EFBIG, "huge label file is an error for that label only");
		IS(casfs_label_get(s, "moved", hex), 0, "other labels unaffected");
		IS(casfs_label_set(s, "garbage", a, NULL, NULL), 0, "garbage label can be overwritten");
		unlink(p);
		/* (A new label is linked in from an anonymous file; these
		 * names are taken by files, so they go by rename.) */
		IS(casfs_label_get(s, "garbage", hex), 0, "the overwritten garbage label reads");
		STR_IS(hex, a, "as the new digest");
		IS(casfs_label_set(s, "empty", b, NULL, NULL), 0, "an empty label file can be overwritten");
		IS(casfs_label_get(s, "empty", hex), 0, "and reads");
		STR_IS(hex, b, "as the new digest");
		path_of(p, sizeof(p), casfs_store_id(s), ".casfs/staging");
		IS(count_entries(p), 0, "no staging file left behind");
	}

	/* store-at-label through a pipe */
	int pfd[2];
	OK(pipe(pfd) == 0, "pipe");
	OK(write(pfd[1], "piped", 5) == 5, "write to pipe");
	close(pfd[1]);
	IS(casfs_label_put_fd(s, "piped", pfd[0], NULL, hex, NULL, NULL), 0, "store-at-label from fd");
	close(pfd[0]);
	char want[CASFS_HEX_MAX];
	casfs_blob_put(s, "piped", 5, want);
	STR_IS(hex, want, "store-at-label digest");
	IS(casfs_label_get(s, "piped", old), 0, "label set by store-at-label");
	STR_IS(old, want, "label points at stored content");
}

static int dirent_cb(const char *name, int is_dir, void *ud)
{
	char *acc = ud;
	strcat(acc, name);
	strcat(acc, is_dir ? "/ " : " ");
	return 0;
}

struct other_rename {
	casfs_store *s;
	const char *from, *to;
	int rc;
};

static void *other_rename_main(void *arg)
{
	struct other_rename *o = arg;
	o->rc = casfs_label_rename(o->s, o->from, o->to);
	return NULL;
}

static void *moved_elsewhere_main(void *arg)
{
	casfs_store *s = arg, *s2;
	char a[CASFS_HEX_MAX], b[CASFS_HEX_MAX];
	casfs_label_info li;
	OK(casfs_blob_put(s, "b", 1, b) >= 0, "a blob (stored already)");
	IS(casfs_store_open(&s2, root, "tree"), 0, "open the store again");
	IS(casfs_label_set(s, "m/a", b, NULL, NULL), 0, "a label in a new directory");
	pthread_t t;
	struct other_rename o = { s2, "m", "n", -1 };
	pthread_create(&t, NULL, other_rename_main, &o);
	pthread_join(t, NULL);
	IS(o.rc, 0, "another thread with its own handle renames the directory");
	IS(casfs_label_set(s, "m/b", b, NULL, NULL), 0, "a label under its old name");
	IS(casfs_label_stat(s, "n/b", &li), -ENOENT, "it is not in the moved directory");
	IS(casfs_label_get(s, "m/b", a), 0, "but under the name given");
	casfs_store_free(s2);
	return NULL;
}

static void test_label_tree(void)
{
	casfs_store *s;
	char a[CASFS_HEX_MAX], b[CASFS_HEX_MAX];
	casfs_store_create(root, "tree", CASFS_SHA256, NULL, 0);
	IS(casfs_store_open(&s, root, "tree"), 0, "open tree store");
	casfs_blob_put(s, "a", 1, a);
	casfs_blob_put(s, "b", 1, b);
	casfs_label_info li;
	IS(casfs_label_stat(s, "", &li), 0, "stat top label dir");
	OK(li.is_dir, "top is a directory");
	IS(casfs_label_mkdir(s, "d", 0750), 0, "mkdir label dir");
	IS(casfs_label_mkdir(s, "d", 0750), -EEXIST, "mkdir existing is EEXIST");
	IS(casfs_label_stat(s, "d", &li), 0, "stat label dir");
	OK(li.is_dir && li.mode == 0750, "label dir with its mode");
	IS(casfs_label_set(s, "d/x", a, NULL, NULL), 0, "label in dir");
	IS(casfs_label_stat(s, "d/x", &li), 0, "stat label");
	OK(!li.is_dir && !strcmp(li.digest, a), "label stat gives digest");
	uint32_t mode = 0600;
	int64_t mt = 1000000000LL * 1234567 + 5;
	IS(casfs_label_setattr(s, "d/x", &mode, &mt), 0, "setattr mode and mtime");
	IS(casfs_label_stat(s, "d/x", &li), 0, "stat after setattr");
	OK(li.mode == 0600 && li.mtime_ns == mt, "mode and mtime kept (%o %lld)", li.mode, (long long)li.mtime_ns);
	IS(casfs_label_set(s, "d/x", b, NULL, NULL), 0, "relabel");
	IS(casfs_label_stat(s, "d/x", &li), 0, "stat after relabel");
	OK(li.mode == 0600 && !strcmp(li.digest, b), "new version keeps the mode");
	IS(casfs_label_rmdir(s, "d"), -ENOTEMPTY, "rmdir non-empty");
	IS(casfs_label_mkdir(s, "d/sub", 0755), 0, "mkdir nested");
	char acc[256] = "";
	IS(casfs_label_readdir(s, "d", dirent_cb, acc), 0, "readdir");
	OK(strstr(acc, "x ") && strstr(acc, "sub/ "), "readdir shows file and dir (%s)", acc);
	IS(casfs_label_rename(s, "d", "e"), 0, "rename a label directory");
	IS(casfs_label_get(s, "e/x", a), 0, "label moved with its directory");
	IS(casfs_label_rename(s, "e/x", "e/sub"), -EISDIR, "rename label onto a directory is EISDIR");
	IS(casfs_label_rmdir(s, "e/sub"), 0, "rmdir empty");
	IS(casfs_label_stat(s, "e/sub", &li), -ENOENT, "gone");
	IS(casfs_label_stat(s, "nope/x", &li), -ENOENT, "stat under absent dir is ENOENT");
	/* A label directory a change opened is kept only while the lock is
	 * held: after a rename or removal of the directory, its old name is
	 * a new directory. */
	IS(casfs_label_set(s, "d/y", b, NULL, NULL), 0, "a label under the renamed directory's old name");
	IS(casfs_label_stat(s, "e/y", &li), -ENOENT, "it is not in the renamed directory");
	IS(casfs_label_stat(s, "d", &li), 0, "the old name is a directory again");
	OK(li.is_dir, "(a directory)");
	IS(casfs_label_rename(s, "d/y", "e/y"), 0, "a label moved between directories");
	IS(casfs_label_get(s, "e/y", a), 0, "it arrived");
	IS(strcmp(a, b), 0, "with its digest");
	IS(casfs_label_remove(s, "e/y", NULL, NULL), 0, "remove it");
	int rd = casfs_label_rmdir(s, "d");
	/* (On rados: a directory made by a label is gone with its last one.) */
	OK(rd == 0 || (!backend_is_dir && rd == -ENOENT), "remove the emptied directory (%d)", rd);
	IS(casfs_label_set(s, "d/z", b, NULL, NULL), 0, "a label in a directory removed just before");
	IS(casfs_label_get(s, "d/z", a), 0, "reads back");
	/* The same when someone else (here another handle, in another
	 * thread) moves it; in a fresh thread, which keeps nothing yet. */
	pthread_t t;
	pthread_create(&t, NULL, moved_elsewhere_main, s);
	pthread_join(t, NULL);
	casfs_store_free(s);
}

/* Names made for staging files come from random bytes drawn ahead, and
 * the pid is remembered: a forked child must not repeat its parent's. */
void casfs__randhex(char *out, size_t n);
long casfs__pid(void);

static void test_fork_names(void)
{
	char before[17], mine[17], theirs[17] = "";
	casfs__randhex(before, 16); /* the pool is filled */
	OK(casfs__pid() == (long)getpid(), "the pid");
	int p[2];
	if (pipe(p) < 0) {
		OK(0, "pipe: %s", strerror(errno));
		return;
	}
	pid_t child = fork();
	if (child == 0) {
		char name[17];
		casfs__randhex(name, 16);
		int ok = casfs__pid() == (long)getpid();
		if (write(p[1], name, 16) != 16 || write(p[1], ok ? "y" : "n", 1) != 1)
			_exit(1);
		_exit(0);
	}
	close(p[1]);
	casfs__randhex(mine, 16);
	char pidok = 'n';
	ssize_t n = read(p[0], theirs, 16);
	OK(n == 16 && read(p[0], &pidok, 1) == 1, "the child's name arrived");
	theirs[16] = '\0';
	close(p[0]);
	int status = -1;
	waitpid(child, &status, 0);
	OK(strcmp(mine, theirs) != 0 && strcmp(before, mine) != 0,
	   "parent and child draw different names (%s, %s)", mine, theirs);
	OK(pidok == 'y', "the child's pid is its own");
}

/* A store handle used by forked children: each process's changes still
 * exclude the others' (a lock file opened by the parent is not shared).
 * A counter advanced by compare-and-swap loses no increment. */
static int ctr_value(casfs_store *s, char hex[CASFS_HEX_MAX])
{
	if (casfs_label_get(s, "ctr", hex) < 0)
		return -1;
	int fd;
	if (casfs_blob_open(s, hex, &fd) < 0)
		return -1;
	char buf[32] = "";
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	return n > 0 ? atoi(buf) : -1;
}

static void test_fork_lock(void)
{
	enum { CHILDREN = 3, EACH = 40 };
	casfs_store *s;
	casfs_store_create(root, "forklock", CASFS_SHA256, NULL, 0);
	IS(casfs_store_open(&s, root, "forklock"), 0, "open a store to share with children");
	char hex[CASFS_HEX_MAX];
	IS(casfs_blob_put(s, "0", 1, hex), 0, "counter at 0");
	IS(casfs_label_set(s, "ctr", hex, "", NULL), 0, "the parent locks the store once");
	pid_t kids[CHILDREN];
	for (int k = 0; k < CHILDREN; k++) {
		kids[k] = fork();
		if (kids[k] == 0) {
			for (int i = 0; i < EACH;) {
				char cur[CASFS_HEX_MAX], next[CASFS_HEX_MAX], text[32];
				int v = ctr_value(s, cur);
				if (v < 0)
					_exit(1);
				int n = snprintf(text, sizeof(text), "%d", v + 1);
				if (casfs_blob_put(s, text, (size_t)n, next) < 0)
					_exit(1);
				int rc = casfs_label_set(s, "ctr", next, cur, NULL);
				if (rc == 0)
					i++;
				else if (rc != -ESTALE)
					_exit(1);
			}
			_exit(0);
		}
	}
	int ok = 0;
	for (int k = 0; k < CHILDREN; k++) {
		int status = -1;
		waitpid(kids[k], &status, 0);
		ok += WIFEXITED(status) && WEXITSTATUS(status) == 0;
	}
	IS(ok, CHILDREN, "every child did its increments");
	IS(ctr_value(s, hex), CHILDREN * EACH, "no increment lost");
	casfs_store_free(s);
}

/* Another process rotating the journal: a handle that had the old file
 * open writes its next line to the new one. */
static void test_journal_rotated_elsewhere(void)
{
	casfs_store *s1, *s2;
	casfs_store_create(root, "jrot", CASFS_SHA256, NULL, 0);
	IS(casfs_store_open(&s1, root, "jrot"), 0, "open a store twice (one)");
	IS(casfs_store_open(&s2, root, "jrot"), 0, "(two)");
	char hex[CASFS_HEX_MAX];
	IS(casfs_blob_put(s1, "j", 1, hex), 0, "a blob");
	IS(casfs_label_set(s1, "first", hex, NULL, NULL), 0, "the first handle journals a change");
	setenv("CASFS_JOURNAL_MAX", "1024", 1);
	char name[32];
	for (int i = 0; i < 12; i++) {
		snprintf(name, sizeof(name), "other%d", i);
		casfs_label_set(s2, name, hex, NULL, NULL);
	}
	unsetenv("CASFS_JOURNAL_MAX");
	char path[4096];
	snprintf(path, sizeof(path), "%s/jrot/.casfs/journal.1", root_path);
	struct stat sb;
	OK(stat(path, &sb) == 0, "the second handle rotated the journal");
	IS(casfs_label_set(s1, "after-rotation", hex, NULL, NULL), 0, "the first handle journals again");
	snprintf(path, sizeof(path), "%s/jrot/.casfs/journal", root_path);
	char text[8192] = "";
	int fd = open(path, O_RDONLY);
	ssize_t n = fd >= 0 ? read(fd, text, sizeof(text) - 1) : -1;
	if (fd >= 0)
		close(fd);
	text[n > 0 ? n : 0] = '\0';
	OK(strstr(text, "after-rotation") != NULL, "its line is in the current journal");
	casfs_store_free(s2);
	casfs_store_free(s1);
}

/* Listing stamps: a kept listing of data/ or of a label directory is
 * current while its stamp is unchanged; every change of the names there,
 * by casfs or anyone else, changes it.  Sleeps between changes so that a
 * kernel with coarse timestamps gives distinct ones. */
static void test_listing_stamps(void)
{
	casfs_store *s;
	char a[CASFS_HEX_MAX], b[CASFS_HEX_MAX], p[4096];
	int64_t d0, d1, t0, t1, x0, x1;
	casfs_store_create(root, "stamps", CASFS_SHA256, NULL, 0);
	IS(casfs_store_open(&s, root, "stamps"), 0, "open stamps store");
	casfs_blob_put(s, "one", 3, a);
	casfs_label_set(s, "sub/x", a, NULL, NULL);
	if (!backend_is_dir) {
		IS(casfs_listing_stamp(s, NULL, &d0), -ENOTSUP, "rados: no listing stamps");
		casfs_store_free(s);
		return;
	}
	IS(casfs_listing_stamp(s, "no/such", &x0), -ENOENT, "stamp of an absent label dir");
	IS(casfs_listing_stamp(s, "sub/x", &x0), -ENOTDIR, "stamp of a label file");
	IS(casfs_listing_stamp(s, "../x", &x0), -EINVAL, "stamp of a bad name");
	IS(casfs_listing_stamp(s, NULL, &d0), 0, "stamp of data/");
	IS(casfs_listing_stamp(s, "", &t0), 0, "stamp of labels/");
	IS(casfs_listing_stamp(s, "sub", &x0), 0, "stamp of labels/sub");
	usleep(30000);
	IS(casfs_listing_stamp(s, NULL, &d1), 0, "stamp of data/ again");
	IS(d1, d0, "data/ unchanged: same stamp");
	casfs_blob_put(s, "one", 3, b);
	IS(casfs_listing_stamp(s, NULL, &d1), 0, "stamp after storing stored content");
	IS(d1, d0, "storing existing content changes no name");
	casfs_blob_put(s, "two", 3, b);
	IS(casfs_listing_stamp(s, NULL, &d1), 0, "stamp after a new blob");
	OK(d1 != d0, "a new blob changes the data/ stamp");
	casfs_label_set(s, "sub/y", b, NULL, NULL);
	IS(casfs_listing_stamp(s, "sub", &x1), 0, "stamp after a new label");
	OK(x1 != x0, "a new label changes its directory's stamp");
	IS(casfs_listing_stamp(s, "", &t1), 0, "top stamp");
	IS(t1, t0, "a label in sub/ leaves the top's stamp");
	usleep(30000);
	casfs_label_set(s, "sub/y", a, NULL, NULL);
	IS(casfs_listing_stamp(s, "sub", &x0), 0, "stamp after a relabel");
	OK(x0 != x1, "replacing a label (a rename over it) changes the stamp");
	usleep(30000);
	/* A label added by another program. */
	path_of(p, sizeof(p), "stamps", "labels/planted");
	FILE *f = fopen(p, "w");
	OK(f && fputs(a, f) >= 0 && fclose(f) == 0, "plant a label file");
	IS(casfs_listing_stamp(s, "", &t0), 0, "top stamp after a planted label");
	OK(t0 != t1, "a label written by another program changes the stamp");
	casfs_store_free(s);
}

static void test_gc_fsck_stats(void)
{
	casfs_store *s;
	char a[CASFS_HEX_MAX], b[CASFS_HEX_MAX], c[CASFS_HEX_MAX], p[4096];
	casfs_store_create(root, "gc", CASFS_SHA256, NULL, 0);
	IS(casfs_store_open(&s, root, "gc"), 0, "open gc store");
	casfs_blob_put(s, "keep", 4, a);
	casfs_blob_put(s, "drop", 4, b);
	casfs_blob_put(s, "young", 5, c);
	casfs_label_set(s, "k", a, NULL, NULL);
	casfs_label_set(s, "k2", a, NULL, NULL);
	/* Age everything but c. */
	if (backend_is_dir) {
		struct timespec old[2] = { { 1000, 0 }, { 1000, 0 } };
		path_of(p, sizeof(p), "gc", "data/");
		strcat(p, a);
		utimensat(AT_FDCWD, p, old, 0);
		path_of(p, sizeof(p), "gc", "data/");
		strcat(p, b);
		utimensat(AT_FDCWD, p, old, 0);
	} else {
		IS(rados_age_blob("gc", a), 0, "rados: make blob a old");
		IS(rados_age_blob("gc", b), 0, "rados: make blob b old");
	}

	casfs_stats st;
	IS(casfs_store_stats(s, &st), 0, "stats");
	IS(st.blobs, 3, "stats: blobs");
	IS(st.labels, 2, "stats: labels");
	IS(st.bytes, 13, "stats: bytes");
	IS(st.bytes_saved, 4, "stats: two labels on one blob save its size once");

	casfs_gc_opts go = { .grace_seconds = 3600, .dry_run = 1 };
	casfs_gc_result r;
	IS(casfs_gc(s, &go, &r), 0, "gc dry run");
	IS(r.blobs_removed, 1, "dry run would remove one");
	IS(casfs_blob_exists(s, b), 1, "dry run removed nothing");
	go.dry_run = 0;
	IS(casfs_gc(s, &go, &r), 0, "gc");
	IS(r.blobs_removed, 1, "gc removed one blob");
	IS(r.blobs_kept_young, 1, "gc kept the young one");
	IS(casfs_blob_exists(s, b), 0, "old unlabelled blob gone");
	IS(casfs_blob_exists(s, a), 1, "labelled blob kept");
	IS(casfs_blob_exists(s, c), 1, "young blob kept");
	OK(journal_has(s, "gc-remove", b, NULL), "journal records the removal");

	/* fsck: clean, then corrupted. */
	casfs_fsck_result fr;
	IS(casfs_fsck(s, NULL, &fr), 0, "fsck clean store");
	IS(fr.blobs_checked, 2, "fsck checked both blobs");
	if (backend_is_dir) {
		path_of(p, sizeof(p), "gc", "data/");
		strcat(p, a);
		chmod(p, 0644);
		write_file(p, "KEEP", 4);
	} else {
		IS(rados_corrupt_blob("gc", a, "KEEP"), 0, "rados: corrupt blob a's head object");
	}
	IS(casfs_fsck(s, NULL, &fr), 1, "fsck finds corrupted blob");
	IS(fr.bad_blobs, 1, "one bad blob");
	IS(casfs_blob_exists(s, a), 1, "fsck without repair moves nothing");
	int fd;
	char buf[64];
	IS(casfs_blob_open(s, a, &fd), 0, "open corrupted blob");
	int devnull = open("/dev/null", O_WRONLY);
	IS(casfs_blob_verify_copy(s, a, fd, devnull), -EIO, "verified copy of corrupted blob is EIO");
	close(devnull);
	close(fd);
	casfs_fsck_opts fo = { .repair = 1 };
	char h0[CASFS_HEX_MAX];
	IS(casfs_fsck(s, &fo, &fr), 1, "fsck --repair reports damage");
	IS(fr.bad_blobs, 1, "repair run: one bad blob");
	IS(fr.dangling_labels, 2, "repair run: both labels on it now dangle");
	IS(fr.repaired, 3, "blob and its two labels quarantined");
	IS(casfs_blob_exists(s, a), 0, "bad blob no longer served");
	IS(casfs_label_get(s, "k", h0), -ENOENT, "dangling label moved aside");
	if (backend_is_dir) {
		path_of(p, sizeof(p), "gc", ".casfs/quarantine");
		IS(count_entries(p), 3, "blob and labels in quarantine");
	} else {
		char qp[CASFS_HEX_MAX + 8];
		snprintf(qp, sizeof(qp), "q.%s.", a);
		IS(rados_count_objects("gc", qp), 1, "rados: the blob kept in quarantine (q.<hex>.*)");
		IS(rados_count_omap("gc", "casfs.quarantine"), 2, "rados: both labels kept in quarantine");
	}
	OK(journal_has(s, "fsck-quarantine", "\"label\":\"k\"", a), "journal keeps the quarantined label's digest");
	IS(casfs_fsck(s, NULL, &fr), 0, "store clean after repair");
	(void)buf;

	/* Debris of a dead writer: a staging file nobody holds locked.
	 * (rados stages in O_TMPFILE files: a dead writer leaves none.) */
	if (backend_is_dir) {
		path_of(p, sizeof(p), "gc", ".casfs/staging/s.99999.deadbeef");
		write_file(p, "partial", 7);
	}
	casfs_writer *live;
	casfs__stage_named(1); /* so that the cleaner sees it */
	casfs_writer_open(&live, s);
	casfs__stage_named(0);
	casfs_writer_write(live, "live", 4);
	if (backend_is_dir) {
		IS(casfs_fsck(s, NULL, &fr), 0, "fsck with debris is still clean");
		IS(fr.debris_removed, 1, "only the dead writer's file removed");
	} else {
		IS(casfs_fsck(s, NULL, &fr), 0, "fsck with a live writer is clean");
		IS(fr.debris_removed, 0, "no debris to remove");
	}
	char h[CASFS_HEX_MAX];
	IS(casfs_writer_commit(live, h), 0, "live writer unaffected by fsck");
	casfs_writer_free(live);
	casfs_store_free(s);
}

static void test_theater_open(void)
{
	/* A Theater store: no .casfs/, no data/, no labels/.  (rados has no
	 * Theater stores: the same checks on a fresh sha1 store.) */
	char p[4096], buf[128];
	casfs_store *s;
	if (backend_is_dir) {
		snprintf(p, sizeof(p), "%s/0b8e5f1c-2c1a-4c55-9f0e-123456789abc", root_path);
		mkdir(p, 0755);
		IS(casfs_store_open(&s, root, "0b8e5f1c-2c1a-4c55-9f0e-123456789abc"), 0, "open Theater store");
		IS(casfs_store_algo(s), CASFS_SHA1, "Theater store is sha1");
	} else {
		IS(casfs_store_create(root, "0b8e5f1c-2c1a-4c55-9f0e-123456789abc", CASFS_SHA1, NULL, 0), 0,
		   "create a sha1 store");
		IS(casfs_store_open(&s, root, "0b8e5f1c-2c1a-4c55-9f0e-123456789abc"), 0, "open the sha1 store");
		IS(casfs_store_algo(s), CASFS_SHA1, "sha1 store is sha1");
	}
	int n = 0;
	IS(casfs_label_list(s, count_cb, &n), 0, "missing labels/ lists as empty");
	IS(casfs_blob_list(s, count_cb, &n), 0, "missing data/ lists as empty");
	IS(n, 0, "nothing listed");
	char hex[CASFS_HEX_MAX];
	IS(casfs_label_put_fd(s, "l", open("/dev/null", O_RDONLY), NULL, hex, NULL, NULL), 0,
	   "store-at-label into Theater store");
	IS(strlen(hex), 40, "sha1 digest");
	casfs_blob_put(s, "hello\n", 6, hex);
	STR_IS(hex, sha1_hello, "sha1 of hello");
	IS(casfs_label_set(s, "a/b", hex, NULL, NULL), 0, "nested label");
	if (backend_is_dir) {
		snprintf(p, sizeof(p), "%s/0b8e5f1c-2c1a-4c55-9f0e-123456789abc/labels/a/b", root_path);
		OK(read_file(p, buf, sizeof(buf)) == 40 && !strcmp(buf, sha1_hello), "label file: 40 hex, no newline");
	} else {
		IS(casfs_label_get(s, "a/b", buf), 0, "get the nested label");
		STR_IS(buf, sha1_hello, "label holds the 40-hex digest");
	}
	casfs_store_free(s);
	IS(casfs_store_open(&s, root, "0b8e5f1c-2c1a-4c55-9f0e-123456789abc"), 0, "reopen");
	IS(casfs_store_algo(s), CASFS_SHA1,
	   backend_is_dir ? "still sha1 after .casfs/ was added" : "still sha1 after reopening");
	casfs_store_free(s);
}

static void test_sessions(void)
{
	casfs_store *s;
	casfs_store_create(root, "sess", CASFS_SHA256, NULL, 0);
	IS(casfs_store_open(&s, root, "sess"), 0, "open session store");
	int a, b, c;
	int64_t since = -1;
	IS(casfs_store_session_begin(s, &a, &since), 0, "first session");
	IS(since, 0, "no unclean session before it");
	int64_t since2 = -1;
	IS(casfs_store_session_begin(s, &b, &since2), 0, "a second, concurrent session");
	IS(since2, 0, "a live session is not unclean");
	if (a >= 0)
		close(a); /* the first one's process dies without ending it */
	int64_t since3 = backend_is_dir ? 0 : -1;
	IS(casfs_store_session_begin(s, &c, &since3), 0, "a third session");
	if (backend_is_dir)
		OK(since3 > 0 && since3 <= casfs__test_now(), "the dead session is reported with its start (%lld)",
		   (long long)since3);
	else /* a blob's head is created whole and last: nothing to check */
		IS(since3, 0, "rados: no unclean session to report");
	casfs_store_session_end(s, b);
	casfs_store_session_end(s, c);
	int d;
	int64_t since4 = -1;
	IS(casfs_store_session_begin(s, &d, &since4), 0, "a session after clean ends");
	IS(since4, 0, "clean ends leave nothing to check");
	casfs_store_session_end(s, d);
	if (backend_is_dir) {
		char p[4096];
		snprintf(p, sizeof(p), "%s/sess/.casfs/sessions", root_path);
		IS(count_entries(p), 0, "no session files left");
	}
	casfs_store_free(s);
}

/* Deferred durability: casfs_store_sync() syncs only when something was
 * published unsynced, and records a mark in the session, which is what a
 * later session reports after an unclean stop (not the start). */
static void test_deferred_sync(void)
{
	casfs_store *s;
	casfs_store_create(root, "defer", CASFS_SHA256, NULL, 0);
	IS(casfs_store_open(&s, root, "defer"), 0, "open store for deferred syncs");
	int a = -1, b = -1;
	int64_t since = -1;
	IS(casfs_store_session_begin(s, &a, &since), 0, "session");
	casfs_store_defer_sync(s, 1);
	IS(casfs_store_sync(s, a), 0, "a sync with nothing published");
	usleep(1100000); /* so that the mark (a second of slack) passes the start */
	char hex[CASFS_HEX_MAX];
	IS(casfs_blob_put(s, "deferred\n", 9, hex), 0, "a blob published without a sync");
	IS(casfs_label_set(s, "d", hex, NULL, NULL), 0, "a label set without a sync");
	char got[CASFS_HEX_MAX] = "";
	IS(casfs_label_get(s, "d", got), 0, "the deferred label reads back");
	IS(strcmp(got, hex), 0, "with its digest");
	int64_t before = casfs__test_now();
	IS(casfs_store_sync(s, a), 0, "a sync of what was published");
	if (backend_is_dir && a >= 0) {
		char text[128] = "";
		ssize_t n = pread(a, text, sizeof(text) - 1, 0);
		long long start = 0, mark = 0;
		OK(n > 0 && sscanf(text, "start=%lld\nmark=%lld", &start, &mark) == 2 && mark > start,
		   "the session holds its mark, after its start: %s", text);
		OK(mark >= before - 1000000000LL && mark <= casfs__test_now(),
		   "the mark is the sync's time less a second (%lld, sync at %lld)", mark, (long long)before);
		/* Nothing new since: the next sync leaves the mark alone. */
		IS(casfs_store_sync(s, a), 0, "a second sync with nothing new");
		long long mark2 = 0;
		n = pread(a, text, sizeof(text) - 1, 0);
		text[n > 0 ? n : 0] = '\0';
		OK(sscanf(text, "start=%lld\nmark=%lld", &start, &mark2) == 2 && mark2 == mark,
		   "nothing to sync: the mark stays");
		close(a); /* the process dies */
		a = -1;
		IS(casfs_store_session_begin(s, &b, &since), 0, "a session after the unclean stop");
		IS(since, mark, "it reports the dead session's last mark, not its start");
		casfs_store_session_end(s, b);
	} else if (a >= 0) {
		casfs_store_session_end(s, a);
	}
	casfs_store_free(s);
}

struct thread_arg {
	casfs_store *s;
	int id, errors;
};

static void *label_thread(void *arg)
{
	struct thread_arg *t = arg;
	for (int i = 0; i < 50; i++) {
		char c[64], hex[CASFS_HEX_MAX], cur[CASFS_HEX_MAX];
		int len = snprintf(c, sizeof(c), "thread %d round %d", t->id, i);
		if (casfs_blob_put(t->s, c, (size_t)len, hex) < 0)
			t->errors++;
		/* Increment-style CAS on a shared label: retry on conflict. */
		for (;;) {
			int g = casfs_label_get(t->s, "shared", cur);
			int rc = casfs_label_set(t->s, "shared", hex, g == 0 ? cur : "", NULL);
			if (rc == 0)
				break;
			if (rc != -ESTALE && rc != -EEXIST && rc != -ENOENT) {
				t->errors++;
				break;
			}
		}
	}
	return NULL;
}

static int count_shared_changes(const char *line, void *ud)
{
	if (strstr(line, "\"label\":\"shared\"") && strstr(line, "\"outcome\":\"ok\""))
		(*(int *)ud)++;
	return 0;
}

/* A cleaner of staging debris running while labels are written: a label
 * being written is staged without a flock of its own, which is safe only
 * because the cleaner takes the store's lock. */
struct cleaner_arg {
	casfs_store *s;
	volatile int stop;
	int runs, errors;
};

static void *cleaner_main(void *arg)
{
	struct cleaner_arg *c = arg;
	while (!c->stop) {
		unsigned removed = 0;
		/* (It may remove a writer's staging file between its creation
		 * and its flock: the writer sees that and makes another.) */
		if (casfs_store_clean_staging(c->s, &removed) < 0)
			c->errors++;
		c->runs++;
	}
	return NULL;
}

static void test_cleaner_beside_writers(void)
{
	casfs_store *s, *s2;
	casfs_store_create(root, "cleaner", CASFS_SHA256, NULL, 0);
	IS(casfs_store_open(&s, root, "cleaner"), 0, "open a store for writers");
	IS(casfs_store_open(&s2, root, "cleaner"), 0, "and for a cleaner");
	struct cleaner_arg c = { s2, 0, 0, 0 };
	pthread_t th;
	pthread_create(&th, NULL, cleaner_main, &c);
	int failed = 0;
	char hex[CASFS_HEX_MAX], name[32], body[32];
	for (int i = 0; i < 300; i++) {
		int n = snprintf(body, sizeof(body), "cleaned %d", i);
		snprintf(name, sizeof(name), "d/l%d", i % 7);
		if (casfs_blob_put(s, body, (size_t)n, hex) < 0 || casfs_label_set(s, name, hex, NULL, NULL) < 0)
			failed++;
	}
	c.stop = 1;
	pthread_join(th, NULL);
	IS(failed, 0, "no label change failed while a cleaner ran");
	OK(c.runs > 0, "the cleaner ran (%d times)", c.runs);
	IS(c.errors, 0, "the cleaner never failed");
	casfs_store_free(s2);
	casfs_store_free(s);
}

static void test_threads(void)
{
	casfs_store *s;
	casfs_store_create(root, "threads", CASFS_SHA256, NULL, 0);
	casfs_store_open(&s, root, "threads");
	pthread_t th[4];
	struct thread_arg args[4];
	for (int i = 0; i < 4; i++) {
		args[i] = (struct thread_arg){ s, i, 0 };
		pthread_create(&th[i], NULL, label_thread, &args[i]);
	}
	int errors = 0;
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		errors += args[i].errors;
	}
	IS(errors, 0, "four threads: no unexpected errors");
	int changes = 0;
	casfs_journal_read(s, count_shared_changes, &changes);
	IS(changes, 200, "every CAS succeeded exactly once (200 label changes journaled)");
	casfs_store_free(s);
}

/* Stops the run: the rados tests need a cluster (TAP "Bail out!"). */
static void bail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void bail(const char *fmt, ...)
{
	va_list ap;
	printf("Bail out! ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf(" -- the rados tests need a Ceph cluster: start one with "
	       "`tests/ceph/cluster start DIR --pool casfs-unit` and run with the CEPH_CONF=... it prints "
	       "and CASFS_TEST_RADOS_ROOT=rados:casfs-unit\n");
	fflush(stdout);
	if (scratch_path)
		rm_rf(scratch_path);
	exit(1);
}

/* Opens $CASFS_TEST_RADOS_ROOT with a fresh namespace of this run's. */
static void open_rados_root(void)
{
	const char *base = getenv("CASFS_TEST_RADOS_ROOT");
	if (!base || !*base)
		bail("CASFS_TEST_RADOS_ROOT is not set");
	if (strncmp(base, "rados:", 6) != 0 || !base[6] || base[6] == '/')
		bail("CASFS_TEST_RADOS_ROOT=%s is not rados:POOL or rados:POOL/NAMESPACE", base);
	unsigned char rnd[6];
	if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		unsigned long long x = (unsigned long long)ts.tv_nsec ^ ((unsigned long long)getpid() << 32);
		memcpy(rnd, &x, sizeof(rnd));
	}
	char tag[16];
	for (int i = 0; i < 6; i++)
		sprintf(tag + 2 * i, "%02x", rnd[i]);
	/* A namespace cannot hold '/': under rados:POOL/NS the run's is NS-unit-<tag>. */
	const char *slash = strchr(base + 6, '/');
	if (asprintf(&rados_spec, "%s%sunit-%s", base, slash ? "-" : "/", tag) < 0)
		exit(99);
	slash = strchr(rados_spec + 6, '/');
	rados_pool = strndup(rados_spec + 6, (size_t)(slash - rados_spec - 6));
	rados_ns = strdup(slash + 1);

	scratch_path = scratch_dir();
	static char conf_opt[4200], cache_opt[4200];
	if (asprintf(&rados_cache, "%s/cache", scratch_path) < 0)
		exit(99);
	int k = 0;
	const char *conf = getenv("CEPH_CONF");
	if (conf && *conf) {
		snprintf(conf_opt, sizeof(conf_opt), "ceph_conf=%s", conf);
		rados_opts[k++] = conf_opt;
	}
	snprintf(cache_opt, sizeof(cache_opt), "cache_dir=%s", rados_cache);
	rados_opts[k++] = cache_opt;
	rados_opts[k++] = "ceph_timeout=20";
	rados_opts[k] = NULL;

	int rc = casfs_root_open_opts(&root, rados_spec, 0, rados_opts);
	if (rc < 0)
		bail("cannot open %s (CEPH_CONF=%s): %s (%s)", rados_spec, conf ? conf : "(unset)",
		     casfs_error_last(), strerror(-rc));
	printf("# rados root %s, cache %s\n", rados_spec, rados_cache);

	/* Our own client, to reach the objects behind the API. */
	const char *cid = getenv("CEPH_ID");
	if (!cid || !*cid)
		cid = "admin";
	if (!strncmp(cid, "client.", 7))
		cid += 7;
	if ((rc = rados_create(&poke_cl, cid)) < 0 ||
	    (rc = rados_conf_read_file(poke_cl, conf && *conf ? conf : NULL)) < 0 ||
	    (rc = rados_conf_set(poke_cl, "client_mount_timeout", "20")) < 0 ||
	    (rc = rados_conf_set(poke_cl, "log_to_stderr", "false")) < 0 ||
	    (rc = rados_conf_set(poke_cl, "err_to_stderr", "false")) < 0 ||
	    (rc = rados_connect(poke_cl)) < 0 || (rc = rados_ioctx_create(poke_cl, rados_pool, &poke_io)) < 0)
		bail("the test's own librados client cannot reach pool '%s': %s", rados_pool, strerror(-rc));
	OK(root != NULL, "open root %s", rados_spec);
}

/* Removes every object of this run's namespaces (NS and NS/<store>). */
static void rados_cleanup(void)
{
	size_t nl = strlen(rados_ns), n = 0, cap = 0;
	char **ns = NULL, **oid = NULL;
	rados_ioctx_set_namespace(poke_io, LIBRADOS_ALL_NSPACES);
	rados_list_ctx_t ctx;
	int rc = rados_nobjects_list_open(poke_io, &ctx);
	if (rc == 0) {
		const char *e, *key, *nsp;
		while (rados_nobjects_list_next(ctx, &e, &key, &nsp) == 0) {
			if (!nsp || strncmp(nsp, rados_ns, nl) != 0 || (nsp[nl] != '\0' && nsp[nl] != '/'))
				continue;
			if (n == cap) {
				cap = cap ? 2 * cap : 64;
				ns = realloc(ns, cap * sizeof(*ns));
				oid = realloc(oid, cap * sizeof(*oid));
			}
			ns[n] = strdup(nsp);
			oid[n++] = strdup(e);
		}
		rados_nobjects_list_close(ctx);
	}
	int removed = 0;
	for (size_t i = 0; i < n; i++) {
		rados_ioctx_set_namespace(poke_io, ns[i]);
		removed += rados_remove(poke_io, oid[i]) == 0;
		free(ns[i]);
		free(oid[i]);
	}
	free(ns);
	free(oid);
	OK(rc == 0 && removed == (int)n, "rados: this run's namespaces emptied (%d objects)", removed);
}

int main(int argc, char **argv)
{
	const char *backend = argc > 1 ? argv[1] : "dir";
	if (argc > 2 || (strcmp(backend, "dir") != 0 && strcmp(backend, "rados") != 0)) {
		fprintf(stderr, "usage: %s [dir|rados]\n", argv[0]);
		return 2;
	}
	backend_is_dir = !strcmp(backend, "dir");
	signal(SIGPIPE, SIG_IGN); /* a pipe whose reader gave up is EPIPE, not death */
	if (backend_is_dir) {
		root_path = scratch_dir();
		scratch_path = root_path;
		IS(casfs_root_open(&root, root_path, 0), 0, "open root");
	} else {
		open_rados_root();
		STR_IS(casfs_root_backend(root), "rados", "root backend");
		casfs_root *nopool;
		IS(casfs_root_open_opts(&nopool, "rados:casfs-no-such-pool", 0, rados_opts), -ENOENT,
		   "missing pool is ENOENT");
	}
	casfs_root *bad;
	IS(casfs_root_open(&bad, "/nonexistent/casfs-root", 0), -ENOENT, "missing root is ENOENT");
	test_names();
	test_stores();
	casfs_store *s;
	char id[CASFS_ID_MAX + 1];
	casfs_store_create(root, NULL, CASFS_SHA256, id, sizeof(id));
	IS(casfs_store_open(&s, root, id), 0, "open fresh store");
	test_blobs(s);
	test_writer(s);
	test_stream_hasher(s);
	test_labels(s);
	casfs_store_free(s);
	test_gc_fsck_stats();
	test_label_tree();
	if (backend_is_dir) {
		/* librados must not be used across fork (a child under valgrind
		 * reports the library's state as leaked), and only a directory
		 * store has staging files for a cleaner to remove: on rados they
		 * are O_TMPFILEs and cleaning is a no-op. */
		test_fork_names();
		test_journal_rotated_elsewhere();
		test_fork_lock();
	}
	test_listing_stamps();
	test_theater_open();
	test_sessions();
	test_deferred_sync();
	test_threads();
	if (backend_is_dir)
		test_cleaner_beside_writers();
	casfs_root_free(root);
	if (!backend_is_dir) {
		rados_cleanup();
		rados_ioctx_destroy(poke_io);
		rados_shutdown(poke_cl);
		free(rados_spec);
		free(rados_pool);
		free(rados_ns);
		free(rados_cache);
	}
	rm_rf(scratch_path);
	free(scratch_path);
	return tap_done();
}
