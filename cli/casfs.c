/*
 * casfs.c — the `casfs` command: one verb per operation of libcasfs, in
 * Theater's argument order (casfs [--root ROOT] VERB STORE [LABEL]
 * [FILE|-|DIGEST]).
 *
 * What a verb prints on stdout is meant for scripts: an id, a digest, a
 * number or one name per line.  Messages go to stderr as one line
 * "casfs: ...".  Exit status: 0 success (yes), 1 no (exists, get-by-label,
 * fsck found damage), 2 bad usage, 3 any other failure.
 */
#include <casfs.h>

#include "fs.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { EXIT_YES = 0, EXIT_NO = 1, EXIT_USAGE = 2, EXIT_FAIL = 3 };

/* ----------------------------------------------------------------- options */

struct opts {
	const char *root;
	unsigned root_flags;
	const char *expect;     /* --expect DIGEST, or "" for --expect none */
	bool have_expect;
	const char *hash;       /* --hash for new */
	uint64_t grace;         /* --grace for gc */
	bool dry_run, repair, no_verify, quiet, help;
	/* Root options (casfs_root_open_opts): "ceph_conf=...", ... */
	const char *root_opts[8];
	char root_opt_buf[8][PATH_MAX + 32];
	int nroot_opts;
	const char **args; /* positional arguments after the verb */
	int nargs;
};

struct verb;
/* A verb; s is its open store when the verb takes one (.store). */
typedef int (*verb_fn)(casfs_store *s, struct opts *o);

struct verb {
	const char *name;
	const char *usage;
	const char *summary;
	const char *details;
	verb_fn fn;
	int min_args, max_args; /* positional arguments after the verb */
	bool store;            /* the first argument is a store, opened for fn */
};

static const struct verb *current_verb;

/* Prints one line "casfs: ..." on stderr. */
static void say(const char *fmt, va_list ap)
{
	fputs("casfs: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	say(fmt, ap);
	va_end(ap);
	return EXIT_FAIL;
}

/* Reports a library failure: its message, or strerror if it left none. */
static int lib_fail(int rc)
{
	const char *m = casfs_error_last();
	if (m && *m)
		return fail("%s", m);
	return fail("%s", strerror(-rc));
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	say(fmt, ap);
	va_end(ap);
	if (current_verb)
		fprintf(stderr, "usage: casfs %s\n", current_verb->usage);
	else
		fputs("usage: casfs [--root ROOT] VERB [ARGS]   (casfs help for the verbs)\n", stderr);
	return EXIT_USAGE;
}

/* ---------------------------------------------------------------- progress */

struct progress {
	bool on;
	struct timespec start, last;
	uint64_t files_done, files_total, bytes_done, bytes_base;
	const char *what;
};

static double secs_since(const struct timespec *t)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - t->tv_sec) + (double)(now.tv_nsec - t->tv_nsec) / 1e9;
}

static void progress_init(struct progress *p, const char *what, bool quiet)
{
	memset(p, 0, sizeof(*p));
	p->on = !quiet && isatty(STDERR_FILENO);
	p->what = what;
	clock_gettime(CLOCK_MONOTONIC, &p->start);
	p->last = p->start;
}

static void progress_show(struct progress *p, bool force)
{
	if (!p->on)
		return;
	if (!force && secs_since(&p->last) < 0.2)
		return;
	clock_gettime(CLOCK_MONOTONIC, &p->last);
	double mib = (double)(p->bytes_base + p->bytes_done) / 1048576.0;
	double t = secs_since(&p->start);
	if (p->files_total > 1)
		fprintf(stderr, "\r%s: %" PRIu64 "/%" PRIu64 " files, %.1f MiB, %.1f MiB/s   ", p->what,
			p->files_done, p->files_total, mib, t > 0 ? mib / t : 0);
	else
		fprintf(stderr, "\r%s: %.1f MiB, %.1f MiB/s   ", p->what, mib, t > 0 ? mib / t : 0);
}

static void progress_end(struct progress *p)
{
	if (p->on && secs_since(&p->start) >= 0.2) {
		progress_show(p, true);
		fputc('\n', stderr);
	}
}

static void on_bytes(uint64_t done, void *ud)
{
	struct progress *p = ud;
	p->bytes_done = done;
	progress_show(p, false);
}

static void on_items(uint64_t done, uint64_t total, void *ud)
{
	struct progress *p = ud;
	p->files_done = done;
	p->files_total = total;
	if (!p->on || secs_since(&p->last) < 0.2)
		return;
	clock_gettime(CLOCK_MONOTONIC, &p->last);
	fprintf(stderr, "\r%s: %" PRIu64 "/%" PRIu64 "   ", p->what, done, total);
}

/* ------------------------------------------------------------------ helpers */

static int open_root(struct opts *o, casfs_root **root, bool create)
{
	o->root_opts[o->nroot_opts] = NULL;
	int rc = casfs_root_open_opts(root, o->root, o->root_flags | (create ? CASFS_ROOT_CREATE : 0),
				      o->root_opts);
	if (rc < 0)
		return lib_fail(rc);
	return 0;
}

static int open_store(struct opts *o, casfs_root **root, casfs_store **store)
{
	/* A bad store id is refused before the root is opened (on a rados:
	 * root, before connecting to the cluster). */
	int rc = casfs_id_check(o->args[0]);
	if (rc < 0)
		return lib_fail(rc);
	rc = open_root(o, root, false);
	if (rc)
		return rc;
	rc = casfs_store_open(store, *root, o->args[0]);
	if (rc < 0) {
		rc = lib_fail(rc);
		casfs_root_free(*root);
		return rc;
	}
	return 0;
}

static void close_store(casfs_root *root, casfs_store *store)
{
	casfs_store_free(store);
	casfs_root_free(root);
}

/* Opens FILE or "-" (stdin) for reading. */
static int open_input(const char *path, int *fd)
{
	if (!path || strcmp(path, "-") == 0) {
		*fd = STDIN_FILENO;
		return 0;
	}
	*fd = open(path, O_RDONLY | O_CLOEXEC);
	if (*fd < 0)
		return fail("cannot open %s: %s", path, strerror(errno));
	struct stat sb;
	if (fstat(*fd, &sb) == 0 && S_ISDIR(sb.st_mode)) {
		close(*fd);
		return fail("%s is a directory", path);
	}
	return 0;
}

static void close_input(int fd)
{
	if (fd != STDIN_FILENO)
		close(fd);
}

static int print_name(const char *name, void *ud)
{
	(void)ud;
	return puts(name) < 0 ? -EIO : 0;
}

struct names {
	char **v;
	size_t n, cap;
};

static int collect(const char *name, void *ud)
{
	struct names *ns = ud;
	if (ns->n == ns->cap) {
		size_t cap = ns->cap ? ns->cap * 2 : 1024;
		char **v = realloc(ns->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		ns->v = v;
		ns->cap = cap;
	}
	if (!(ns->v[ns->n] = strdup(name)))
		return -ENOMEM;
	ns->n++;
	return 0;
}

static int cmpstr(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Prints the names a list function gives, sorted, one per line. */
static int print_sorted(int (*list)(void *, casfs_name_fn, void *), void *obj)
{
	struct names ns = { 0 };
	int rc = list(obj, collect, &ns);
	if (rc == 0 && ns.n)
		qsort(ns.v, ns.n, sizeof(*ns.v), cmpstr);
	for (size_t i = 0; i < ns.n; i++) {
		if (rc == 0)
			fputs(ns.v[i], stdout), fputc('\n', stdout);
		free(ns.v[i]);
	}
	free(ns.v);
	if (rc == -ENOMEM)
		return fail("out of memory");
	if (rc < 0)
		return lib_fail(rc);
	return 0;
}

static int list_stores_fn(void *obj, casfs_name_fn fn, void *ud) { return casfs_store_list(obj, fn, ud); }
static int list_labels_fn(void *obj, casfs_name_fn fn, void *ud) { return casfs_label_list(obj, fn, ud); }
static int list_blobs_fn(void *obj, casfs_name_fn fn, void *ud) { return casfs_blob_list(obj, fn, ud); }

static const char *expect_or(struct opts *o, const char *dflt)
{
	return o->have_expect ? o->expect : dflt;
}

/* -------------------------------------------------------------------- verbs */

static int v_new(casfs_store *s, struct opts *o)
{
	(void)s;
	casfs_algo algo = CASFS_SHA256;
	if (o->hash && casfs_algo_parse(&algo, o->hash) < 0)
		return usage_error("%s", casfs_error_last());
	casfs_root *root;
	int rc = open_root(o, &root, true);
	if (rc)
		return rc;
	char id[CASFS_ID_MAX + 1];
	rc = casfs_store_create(root, o->nargs ? o->args[0] : NULL, algo, id, sizeof(id));
	casfs_root_free(root);
	if (rc < 0)
		return lib_fail(rc);
	puts(id);
	return 0;
}

static int v_stores(casfs_store *s, struct opts *o)
{
	(void)s;
	struct stat sb;
	if (strncmp(o->root, "rados:", 6) != 0 && stat(o->root, &sb) < 0 && errno == ENOENT)
		return 0; /* no root yet: no stores */
	casfs_root *root;
	int rc = open_root(o, &root, false);
	if (rc)
		return rc;
	rc = print_sorted(list_stores_fn, root);
	casfs_root_free(root);
	return rc;
}

/* Stores many files: staged and hashed one by one, committed in batches
 * with one filesystem sync per batch. */
static int store_files(casfs_store *s, struct opts *o, const char *const *files, int n)
{
	enum { BATCH = 256 };
	casfs_writer *ws[BATCH];
	char hex[BATCH][CASFS_HEX_MAX];
	int ret[BATCH];
	struct progress p;
	progress_init(&p, "store", o->quiet);
	p.files_total = (uint64_t)n;
	int status = 0;
	for (int base = 0; base < n; base += BATCH) {
		int k = n - base < BATCH ? n - base : BATCH;
		int m = 0;
		for (int i = 0; i < k; i++) {
			int fd;
			if (open_input(files[base + i], &fd)) {
				status = EXIT_FAIL;
				continue;
			}
			int rc = casfs_writer_open(&ws[m], s);
			if (rc < 0) {
				close_input(fd);
				status = lib_fail(rc);
				break;
			}
			p.bytes_done = 0;
			rc = casfs_writer_write_fd(ws[m], fd, on_bytes, &p);
			close_input(fd);
			if (rc < 0) {
				fail("%s: %s", files[base + i], casfs_error_last());
				status = EXIT_FAIL;
				casfs_writer_free(ws[m]);
				continue;
			}
			p.bytes_base += casfs_writer_size(ws[m]);
			p.bytes_done = 0;
			p.files_done++;
			progress_show(&p, false);
			m++;
		}
		casfs_writer_commit_many(ws, (size_t)m, hex, ret);
		for (int i = 0; i < m; i++) {
			if (ret[i] < 0) {
				status = lib_fail(ret[i]);
			} else {
				fputs(hex[i], stdout);
				fputc('\n', stdout);
			}
			casfs_writer_free(ws[i]);
		}
	}
	progress_end(&p);
	return status;
}

static int v_store(casfs_store *s, struct opts *o)
{
	static const char *const dash[] = { "-" };
	if (o->nargs > 1)
		return store_files(s, o, o->args + 1, o->nargs - 1);
	return store_files(s, o, dash, 1);
}

/* Copies a blob to stdout, hashing it on the way unless --no-verify. */
static int v_get(casfs_store *s, struct opts *o)
{
	int fd;
	int rc = casfs_blob_open(s, o->args[1], &fd);
	if (rc < 0)
		return lib_fail(rc);
	if (o->no_verify) {
		for (;;) {
			ssize_t n = sendfile(STDOUT_FILENO, fd, NULL, 1 << 30);
			if (n > 0)
				continue;
			if (n == 0)
				break;
			if (errno == EINTR)
				continue;
			if (errno == EINVAL || errno == ENOSYS) {
				o->no_verify = false; /* fall back to the read loop */
				break;
			}
			rc = fail("writing to stdout: %s", strerror(errno));
			break;
		}
	}
	if (!o->no_verify && rc == 0) {
		rc = casfs_blob_verify_copy(s, o->args[1], fd, STDOUT_FILENO);
		if (rc < 0)
			rc = lib_fail(rc);
	}
	close(fd);
	return rc;
}

static int v_exists(casfs_store *s, struct opts *o)
{
	int rc = casfs_blob_exists(s, o->args[1]);
	if (rc < 0)
		return lib_fail(rc);
	return rc ? EXIT_YES : EXIT_NO;
}

static int v_get_by_label(casfs_store *s, struct opts *o)
{
	char hex[CASFS_HEX_MAX];
	int rc = casfs_label_get(s, o->args[1], hex);
	if (rc == -ENOENT)
		return EXIT_NO;
	if (rc < 0)
		return lib_fail(rc);
	puts(hex);
	return 0;
}

/* label, replace-at-label, remove-from-label and remove-label share this. */
static int label_change(casfs_store *s, struct opts *o, const char *digest, const char *expect)
{
	int rc = digest ? casfs_label_set(s, o->args[1], digest, expect, NULL)
			: casfs_label_remove(s, o->args[1], expect, NULL);
	return rc < 0 ? lib_fail(rc) : 0;
}

static int v_label(casfs_store *s, struct opts *o)
{
	return label_change(s, o, o->args[2], expect_or(o, NULL));
}

static int v_replace_at_label(casfs_store *s, struct opts *o)
{
	return label_change(s, o, o->args[2], expect_or(o, CASFS_LABEL_EXISTS));
}

static int v_remove_label(casfs_store *s, struct opts *o)
{
	return label_change(s, o, NULL, expect_or(o, NULL));
}

static int v_remove_from_label(casfs_store *s, struct opts *o)
{
	return label_change(s, o, NULL, o->args[2]);
}

static int store_at_label(casfs_store *s, struct opts *o, const char *expect)
{
	int fd;
	int rc = open_input(o->nargs > 2 ? o->args[2] : "-", &fd);
	if (rc == 0) {
		struct progress p;
		progress_init(&p, "store", o->quiet);
		char hex[CASFS_HEX_MAX];
		int r = casfs_label_put_fd(s, o->args[1], fd, expect, hex, on_bytes, &p);
		progress_end(&p);
		close_input(fd);
		if (r < 0)
			rc = lib_fail(r);
		else
			puts(hex);
	}
	return rc;
}

static int v_store_at_label(casfs_store *s, struct opts *o)
{
	return store_at_label(s, o, expect_or(o, NULL));
}

static int v_replace_content_at_label(casfs_store *s, struct opts *o)
{
	return store_at_label(s, o, expect_or(o, CASFS_LABEL_EXISTS));
}

static int v_rename_label(casfs_store *s, struct opts *o)
{
	int rc = casfs_label_rename(s, o->args[1], o->args[2]);
	return rc < 0 ? lib_fail(rc) : 0;
}

static int v_list_labels(casfs_store *s, struct opts *o)
{
	(void)o;
	return print_sorted(list_labels_fn, s);
}

static int v_list_all_content(casfs_store *s, struct opts *o)
{
	(void)o;
	return print_sorted(list_blobs_fn, s);
}

static int v_total_size(casfs_store *s, struct opts *o)
{
	(void)o;
	uint64_t bytes;
	int rc = casfs_store_total_size(s, &bytes);
	if (rc < 0)
		return lib_fail(rc);
	printf("%" PRIu64 "\n", bytes);
	return 0;
}

static int v_gc(casfs_store *s, struct opts *o)
{
	struct progress p;
	progress_init(&p, "gc", o->quiet);
	casfs_gc_opts go = { .grace_seconds = o->grace, .dry_run = o->dry_run,
			     .progress = on_items, .ud = &p };
	casfs_gc_result r;
	int rc = casfs_gc(s, &go, &r);
	if (p.on && p.files_total)
		fputc('\n', stderr);
	if (rc < 0)
		return lib_fail(rc);
	printf("%s %" PRIu64 " blobs (%" PRIu64 " bytes); kept %" PRIu64
	       " unlabelled blobs younger than %" PRIu64 "s\n",
	       o->dry_run ? "would remove" : "removed", r.blobs_removed, r.bytes_removed,
	       r.blobs_kept_young, o->grace);
	return 0;
}

static const char *fsck_kind_name(enum casfs_fsck_kind k)
{
	switch (k) {
	case CASFS_FSCK_BAD_BLOB: return "bad-blob";
	case CASFS_FSCK_STRAY_FILE: return "stray-file";
	case CASFS_FSCK_BAD_LABEL: return "bad-label";
	case CASFS_FSCK_DANGLING_LABEL: return "dangling-label";
	case CASFS_FSCK_DEBRIS: return "debris";
	}
	return "problem";
}

struct fsck_print {
	const char *store;
	struct progress *p;
};

static void fsck_report(enum casfs_fsck_kind kind, const char *name, const char *detail,
			int repaired, void *ud)
{
	struct fsck_print *fp = ud;
	if (kind == CASFS_FSCK_DEBRIS)
		return; /* counted in the summary: housekeeping, not damage */
	if (fp->p->on)
		fputc('\n', stderr);
	printf("%s %s %s: %s%s\n", fsck_kind_name(kind), fp->store, name, detail,
	       repaired ? " (repaired)" : "");
}

static void fsck_progress(uint64_t done, uint64_t total, void *ud)
{
	on_items(done, total, ((struct fsck_print *)ud)->p);
}

static int v_fsck(casfs_store *s, struct opts *o)
{
	(void)s;
	casfs_root *root;
	int rc = open_root(o, &root, false);
	if (rc)
		return rc;
	struct names ns = { 0 };
	if (o->nargs == 0) {
		if ((rc = casfs_store_list(root, collect, &ns)) < 0) {
			casfs_root_free(root);
			return lib_fail(rc);
		}
		if (ns.n)
			qsort(ns.v, ns.n, sizeof(*ns.v), cmpstr);
	} else {
		for (int i = 0; i < o->nargs; i++)
			collect(o->args[i], &ns);
	}
	int status = 0;
	for (size_t i = 0; i < ns.n; i++) {
		casfs_store *st;
		int r = casfs_store_open(&st, root, ns.v[i]);
		if (r < 0) {
			status = lib_fail(r);
			continue;
		}
		struct progress p;
		progress_init(&p, "fsck", o->quiet);
		struct fsck_print fp = { ns.v[i], &p };
		casfs_fsck_opts fo = { .repair = o->repair, .report = fsck_report,
				       .progress = fsck_progress, .ud = &fp };
		casfs_fsck_result res;
		r = casfs_fsck(st, &fo, &res);
		if (p.on && p.files_total)
			fputc('\n', stderr);
		casfs_store_free(st);
		if (r < 0) {
			status = lib_fail(r);
			continue;
		}
		uint64_t damage = res.bad_blobs + res.stray_files + res.bad_labels + res.dangling_labels;
		if (!o->quiet)
			fprintf(stderr,
				"casfs: fsck %s: %" PRIu64 " blobs, %" PRIu64 " labels checked; %" PRIu64
				" problems (%" PRIu64 " repaired); %" PRIu64 " staging files of dead writers removed\n",
				ns.v[i], res.blobs_checked, res.labels_checked, damage, res.repaired,
				res.debris_removed);
		if (r == 1 && status == 0)
			status = EXIT_NO;
	}
	for (size_t i = 0; i < ns.n; i++)
		free(ns.v[i]);
	free(ns.v);
	casfs_root_free(root);
	return status;
}

static int v_stats(casfs_store *s, struct opts *o)
{
	(void)o;
	casfs_stats st;
	int rc = casfs_store_stats(s, &st);
	const char *algo = casfs_algo_name(casfs_store_algo(s));
	if (rc < 0)
		return lib_fail(rc);
	printf("algorithm %s\nblobs %" PRIu64 "\nlabels %" PRIu64 "\nbytes %" PRIu64
	       "\nlabelled-bytes %" PRIu64 "\nbytes-saved %" PRIu64 "\n",
	       algo, st.blobs, st.labels, st.bytes, st.labelled_bytes, st.bytes_saved);
	return 0;
}

static int v_events(casfs_store *s, struct opts *o)
{
	(void)o;
	int rc = casfs_journal_read(s, print_name, NULL);
	return rc < 0 ? lib_fail(rc) : 0;
}

static int v_help(casfs_store *s, struct opts *o);

static const struct verb verbs[] = {
	{ "new", "new [--hash sha256|sha1] [ID]", "create a store and print its id",
	  "Creates a store in the root (created if missing) and prints its id: ID if given,\n"
	  "else a fresh UUID.  The hash algorithm is fixed at creation: sha256 unless\n"
	  "--hash sha1 (what Theater uses).", v_new, 0, 1, false },
	{ "stores", "stores", "list store ids, one per line",
	  "Prints every store id in the root, sorted.  A missing root has no stores.", v_stores, 0, 0, false },
	{ "store", "store STORE [FILE...|-]", "store content and print each digest",
	  "Stores each FILE (or standard input for - or no FILE) and prints one digest per\n"
	  "input, in order.  Content already stored is not written again, only freshened\n"
	  "(so gc's grace period starts again).  Many files are committed in batches with\n"
	  "one filesystem sync per batch.", v_store, 1, INT_MAX, true },
	{ "get", "get [--no-verify] STORE DIGEST", "write content to stdout",
	  "Writes the blob to standard output.  The content is hashed on the way out; if it\n"
	  "no longer matches DIGEST the command fails (exit 3) after writing it.\n"
	  "--no-verify skips the check and copies in the kernel (sendfile).", v_get, 2, 2, true },
	{ "exists", "exists STORE DIGEST", "exit 0 if the digest is stored, 1 if not",
	  "Prints nothing.  Exit 0 if the blob is stored, 1 if not, 3 on error.", v_exists, 2, 2, true },
	{ "label", "label [--expect OLD|none] STORE LABEL DIGEST", "point a label at a stored digest",
	  "Points LABEL at DIGEST, which must already be stored.  Nested labels are\n"
	  "written a/b.  --expect OLD only changes a label that points at OLD now;\n"
	  "--expect none only creates a new label.", v_label, 3, 3, true },
	{ "get-by-label", "get-by-label STORE LABEL", "print the digest a label points at",
	  "Prints the digest; exit 1 (and nothing printed) if there is no such label.", v_get_by_label, 2, 2, true },
	{ "store-at-label", "store-at-label [--expect OLD|none] STORE LABEL [FILE|-]",
	  "store content and point a label at it",
	  "Stores FILE (or standard input) and points LABEL at it in one step that a\n"
	  "concurrent gc cannot split; prints the digest.", v_store_at_label, 2, 3, true },
	{ "replace-content-at-label", "replace-content-at-label [--expect OLD] STORE LABEL [FILE|-]",
	  "same as store-at-label, for an existing label",
	  "Like store-at-label, but fails if LABEL does not exist yet.", v_replace_content_at_label, 2, 3, true },
	{ "replace-at-label", "replace-at-label [--expect OLD] STORE LABEL DIGEST",
	  "point an existing label at another stored digest",
	  "Like label, but fails if LABEL does not exist yet.", v_replace_at_label, 3, 3, true },
	{ "remove-label", "remove-label [--expect OLD] STORE LABEL", "remove a label",
	  "Removes LABEL (the content stays until gc).  The journal keeps its old digest.",
	  v_remove_label, 2, 2, true },
	{ "remove-from-label", "remove-from-label STORE LABEL DIGEST",
	  "remove a label only if it still points at DIGEST",
	  "Compare-and-swap removal: fails, changing nothing, if LABEL points elsewhere.",
	  v_remove_from_label, 3, 3, true },
	{ "rename-label", "rename-label STORE FROM TO", "rename a label atomically",
	  "Moves label FROM to TO in one step, replacing any label TO.", v_rename_label, 3, 3, true },
	{ "list-labels", "list-labels STORE", "every label name, nested ones as a/b",
	  "Prints every label name, sorted, one per line.", v_list_labels, 1, 1, true },
	{ "list-all-content", "list-all-content STORE", "every stored digest",
	  "Prints every stored digest, sorted, one per line.", v_list_all_content, 1, 1, true },
	{ "calculate-total-size", "calculate-total-size STORE", "sum of blob sizes in bytes",
	  "Prints the total size of all stored blobs, in bytes.", v_total_size, 1, 1, true },
	{ "gc", "gc [--grace SECONDS] [--dry-run] STORE", "delete blobs no label reaches",
	  "Deletes blobs that no label points at and that were stored (or stored again)\n"
	  "more than SECONDS ago (default 3600).  Safe while other processes write and\n"
	  "label: they wait for gc, and gc never removes a blob a label names.", v_gc, 1, 1, true },
	{ "fsck", "fsck [--repair] [STORE...]", "re-hash every blob and check every label",
	  "Checks every store given (all stores if none): each blob must hash to its name,\n"
	  "each label must hold a digest of a present blob.  Problems are printed on stdout,\n"
	  "one per line (bad-blob, stray-file, bad-label, dangling-label); exit 1 if any.\n"
	  "Staging files of dead writers are always removed.  --repair moves bad blobs\n"
	  "and bad or dangling labels into the store's .casfs/quarantine/.", v_fsck, 0, INT_MAX, false },
	{ "stats", "stats STORE", "blobs, labels, bytes, bytes saved by deduplication",
	  "Prints 'name value' lines: algorithm, blobs, labels, bytes, labelled-bytes (the\n"
	  "sum over labels of their blob's size) and bytes-saved (labelled-bytes minus the\n"
	  "size of the distinct blobs the labels reach).", v_stats, 1, 1, true },
	{ "events", "events STORE", "print the store's journal",
	  "Prints the journal, oldest first: one JSON object per line with time, op, store,\n"
	  "label, digest, old, outcome, errno and error, uid and pid.", v_events, 1, 1, true },
	{ "mount", "mount ROOT MOUNTPOINT [-f] [-d] [-s] [-o opt,...]", "run the filesystem",
	  "Mounts every store of ROOT as a directory under MOUNTPOINT (see mount.casfs(8)):\n"
	  "data/<hash> read-only blobs, labels/<name> symlinks, incoming/<name> writable\n"
	  "files committed when closed.  -f foreground, -d debug, -s single-threaded;\n"
	  "-o ro, allow_other, default_permissions, sync, hash=sha1.", NULL, 2, 2, false },
	{ "help", "help [VERB]", "explain the verbs", "Without VERB, lists the verbs.", v_help, 0, 1, false },
};

static const struct verb *find_verb(const char *name)
{
	for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
		if (strcmp(verbs[i].name, name) == 0)
			return &verbs[i];
	return NULL;
}

static void print_verb_help(const struct verb *v)
{
	printf("usage: casfs %s%s\n\n%s.\n\n%s\n", strcmp(v->name, "mount") ? "[--root ROOT] " : "",
	       v->usage, v->summary, v->details);
}

static void print_general_help(void)
{
	printf("usage: casfs [--root ROOT] [--no-sync] [--quiet] VERB [ARGS]\n\n"
	       "casfs %s: a content-addressed store.  Content is kept once under its digest;\n"
	       "labels are names for digests.\n\nVerbs:\n", CASFS_VERSION);
	for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
		printf("  %-25s %s\n", verbs[i].name, verbs[i].summary);
	printf("\nOptions:\n"
	       "  --root ROOT   the store root (default $CASFS_ROOT, else $XDG_DATA_HOME/casfs,\n"
	       "                else ~/.local/share/casfs)\n"
	       "                or rados:POOL[/NAMESPACE] for a Ceph pool\n"
	       "  --no-sync     do not fsync (a crash may lose recent writes)\n"
	       "  --quiet       no progress display\n"
	       "  --ceph-conf FILE, --ceph-id NAME, --ceph-timeout SECONDS,\n"
	       "  --cache-dir DIR, --cache-size SIZE\n"
	       "                for rados: roots (defaults: $CEPH_CONF, $CEPH_ID or admin, 30,\n"
	       "                /var/cache/casfs or ~/.cache/casfs, 1G); see casfs(7)\n\n"
	       "Exit status: 0 success, 1 no (exists, get-by-label, fsck found damage),\n"
	       "2 bad usage, 3 failure.  'casfs help VERB' or 'casfs VERB --help' explains a verb.\n");
}

static int v_help(casfs_store *s, struct opts *o)
{
	(void)s;
	if (o->nargs == 0) {
		print_general_help();
		return 0;
	}
	const struct verb *w = find_verb(o->args[0]);
	if (!w)
		return usage_error("unknown verb '%s'", o->args[0]);
	print_verb_help(w);
	return 0;
}

/* ------------------------------------------------------------------- main */

static char *default_root(void)
{
	const char *r = getenv("CASFS_ROOT");
	if (r && *r)
		return strdup(r);
	char buf[PATH_MAX];
	const char *x = getenv("XDG_DATA_HOME");
	if (x && *x) {
		snprintf(buf, sizeof(buf), "%s/casfs", x);
		return strdup(buf);
	}
	const char *h = getenv("HOME");
	if (!h || !*h)
		return NULL;
	snprintf(buf, sizeof(buf), "%s/.local/share/casfs", h);
	return strdup(buf);
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-')
		return -1;
	*out = v;
	return 0;
}

static int run(int argc, char **argv, struct opts *op);

/* --ceph-conf FILE and friends: options of a rados:POOL root. */
static const struct {
	const char *flag, *key;
} root_flags[] = {
	{ "--ceph-conf", "ceph_conf" },     { "--ceph-id", "ceph_id" },
	{ "--ceph-timeout", "ceph_timeout" }, { "--cache-dir", "cache_dir" },
	{ "--cache-size", "cache_size" },
};

/* The root option named by flag, or NULL. */
static const char *root_flag_key(const char *flag)
{
	for (size_t i = 0; i < sizeof(root_flags) / sizeof(root_flags[0]); i++)
		if (!strcmp(flag, root_flags[i].flag))
			return root_flags[i].key;
	return NULL;
}

static int add_root_opt(struct opts *o, const char *key, const char *val)
{
	if (o->nroot_opts >= 7)
		return usage_error("too many root options");
	int n = snprintf(o->root_opt_buf[o->nroot_opts], sizeof(o->root_opt_buf[0]), "%s=%s", key, val);
	if (n < 0 || (size_t)n >= sizeof(o->root_opt_buf[0]))
		return usage_error("value of --%s too long", key);
	o->root_opts[o->nroot_opts] = o->root_opt_buf[o->nroot_opts];
	o->nroot_opts++;
	return 0;
}

int main(int argc, char **argv)
{
	struct opts o = { .grace = 3600 };
	int rc = run(argc, argv, &o);
	free(o.args);
	return rc;
}

static int run(int argc, char **argv, struct opts *op)
{
	struct opts o = *op;
	char *root_alloc = NULL;
	int i = 1;
	/* Global options before the verb. */
	for (; i < argc && argv[i][0] == '-' && argv[i][1]; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--root") && i + 1 < argc)
			o.root = argv[++i];
		else if (!strncmp(a, "--root=", 7))
			o.root = a + 7;
		else if (!strcmp(a, "--no-sync"))
			o.root_flags |= CASFS_ROOT_NOSYNC;
		else if (root_flag_key(a) && i + 1 < argc) {
			int e = add_root_opt(&o, root_flag_key(a), argv[++i]);
			if (e)
				return e;
		} else if (strchr(a, '=') && root_flag_key(strndupa(a, (size_t)(strchr(a, '=') - a)))) {
			int e = add_root_opt(&o, root_flag_key(strndupa(a, (size_t)(strchr(a, '=') - a))),
					     strchr(a, '=') + 1);
			if (e)
				return e;
		}
		else if (!strcmp(a, "--quiet") || !strcmp(a, "-q"))
			o.quiet = true;
		else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			print_general_help();
			return 0;
		} else if (!strcmp(a, "--version")) {
			printf("casfs %s\n", CASFS_VERSION);
			return 0;
		} else
			return usage_error("unknown option '%s'", a);
	}
	if (i >= argc)
		return usage_error("no verb given");
	if (!strcmp(argv[i], "mount")) {
		/* The filesystem has its own options (-f, -d, -o ...). */
		return casfs_fs_main(argc - i, argv + i);
	}
	const struct verb *v = find_verb(argv[i]);
	if (!v)
		return usage_error("unknown verb '%s'", argv[i]);
	current_verb = v;
	o.args = op->args = calloc((size_t)argc, sizeof(*o.args));
	if (!o.args)
		return fail("out of memory");
	bool only_args = false;
	for (i++; i < argc; i++) {
		const char *a = argv[i];
		if (only_args || a[0] != '-' || !a[1]) {
			o.args[o.nargs++] = a;
			continue;
		}
		const char *val = NULL;
		const char *eq = strchr(a, '=');
		char key[32];
		size_t klen = eq ? (size_t)(eq - a) : strlen(a);
		if (klen >= sizeof(key))
			return usage_error("unknown option '%s'", a);
		memcpy(key, a, klen);
		key[klen] = '\0';
		bool takes = !strcmp(key, "--expect") || !strcmp(key, "--hash") ||
			     !strcmp(key, "--grace") || !strcmp(key, "--root") || root_flag_key(key);
		if (takes) {
			if (eq)
				val = eq + 1;
			else if (i + 1 < argc)
				val = argv[++i];
			else
				return usage_error("option %s needs a value", key);
		}
		if (!strcmp(key, "--")) {
			only_args = true;
		} else if (!strcmp(key, "--help") || !strcmp(key, "-h")) {
			o.help = true;
		} else if (!strcmp(key, "--expect")) {
			o.have_expect = true;
			o.expect = !strcmp(val, "none") ? "" : val;
		} else if (!strcmp(key, "--hash") && v->fn == v_new) {
			o.hash = val;
		} else if (!strcmp(key, "--sha1") && v->fn == v_new) {
			o.hash = "sha1";
		} else if (!strcmp(key, "--grace") && v->fn == v_gc) {
			if (parse_u64(val, &o.grace) < 0)
				return usage_error("--grace needs a number of seconds, not '%s'", val);
		} else if (!strcmp(key, "--dry-run") && v->fn == v_gc) {
			o.dry_run = true;
		} else if (!strcmp(key, "--repair") && v->fn == v_fsck) {
			o.repair = true;
		} else if (!strcmp(key, "--no-verify") && v->fn == v_get) {
			o.no_verify = true;
		} else if (!strcmp(key, "--root")) {
			o.root = val;
		} else if (root_flag_key(key)) {
			int e = add_root_opt(&o, root_flag_key(key), val);
			if (e)
				return e;
		} else if (!strcmp(key, "--quiet")) {
			o.quiet = true;
		} else {
			return usage_error("unknown option '%s' for %s", a, v->name);
		}
	}
	if (o.help) {
		print_verb_help(v);
		return 0;
	}
	if (o.have_expect && v->fn != v_label && v->fn != v_replace_at_label &&
	    v->fn != v_remove_label && v->fn != v_store_at_label &&
	    v->fn != v_replace_content_at_label)
		return usage_error("--expect does not apply to %s", v->name);
	if (o.nargs < v->min_args)
		return usage_error("%s needs more arguments", v->name);
	if (o.nargs > v->max_args)
		return usage_error("too many arguments for %s", v->name);
	if (v->fn != v_help) {
		if (!o.root)
			o.root = root_alloc = default_root();
		if (!o.root)
			return usage_error("no root: give --root or set CASFS_ROOT");
	}
	/* Many files in one call may hold many staging files open. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max && rl.rlim_cur < 4096) {
		rl.rlim_cur = rl.rlim_max < 4096 ? rl.rlim_max : 4096;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	int rc;
	if (v->store) {
		casfs_root *root;
		casfs_store *s;
		if ((rc = open_store(&o, &root, &s)) == 0) {
			rc = v->fn(s, &o);
			close_store(root, s);
		}
	} else {
		rc = v->fn(NULL, &o);
	}
	if (fflush(stdout) != 0 && rc == 0)
		rc = fail("writing to stdout: %s", strerror(errno));
	free(root_alloc);
	return rc;
}
