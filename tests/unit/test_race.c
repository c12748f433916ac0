/*
 * test_race.c — label writers in two processes race gc in a third: no
 * label ever names an absent blob, and store-at-label is never split by gc.
 *
 * Labellers re-store a small set of contents (freshening), label them,
 * re-label digests they saw earlier (which gc may have removed: then the
 * label must be refused), and use store-at-label.  After each successful
 * label change the labeller checks the blob is present; gc runs with a zero
 * grace period in a loop and, after each pass, checks every label.
 */
#include "tap.h"

#include <signal.h>
#include <sys/wait.h>

enum { ROUNDS = 1000, CONTENTS = 40 };

static char *root_path;

static int fail_msg(const char *who, const char *what, const char *detail)
{
	fprintf(stderr, "%s: %s: %s (%s)\n", who, what, detail, casfs_error_last());
	return 1;
}

/* Returns the number of invariant violations seen by this labeller. */
static int labeller(int me)
{
	casfs_root *root;
	casfs_store *s;
	if (casfs_root_open(&root, root_path, CASFS_ROOT_NOSYNC) < 0 ||
	    casfs_store_open(&s, root, "race") < 0)
		return fail_msg("labeller", "open", "");
	char seen[CONTENTS][CASFS_HEX_MAX];
	int nseen = 0, bad = 0, refused = 0;
	unsigned seed = (unsigned)me * 7919u + 1;
	for (int i = 0; i < ROUNDS; i++) {
		char label[32], content[64], hex[CASFS_HEX_MAX];
		seed = seed * 1103515245u + 12345u;
		snprintf(label, sizeof(label), "p%d/l%u", me, (seed >> 8) % 8);
		int len = snprintf(content, sizeof(content), "content %u", (seed >> 12) % CONTENTS);
		int mode = (int)((seed >> 20) % 3);
		int rc;
		if (mode == 0) {
			/* store, then label: gc may remove it in between. */
			if (casfs_blob_put(s, content, (size_t)len, hex) < 0)
				bad += fail_msg("labeller", "put", content);
			if (nseen < CONTENTS)
				strcpy(seen[nseen++], hex);
			rc = casfs_label_set(s, label, hex, NULL, NULL);
		} else if (mode == 1 && nseen > 0) {
			/* re-label a digest seen earlier, maybe collected since. */
			strcpy(hex, seen[(seed >> 4) % (unsigned)nseen]);
			rc = casfs_label_set(s, label, hex, NULL, NULL);
		} else {
			/* store-at-label: must never be split by gc. */
			casfs_writer *w;
			casfs_writer_open(&w, s);
			casfs_writer_write(w, content, (size_t)len);
			rc = casfs_label_commit(s, label, w, NULL, hex);
			casfs_writer_free(w);
			if (rc < 0)
				bad += fail_msg("labeller", "store-at-label failed", label);
		}
		if (rc == -ENOENT) {
			refused++;
			continue;
		}
		if (rc < 0) {
			bad += fail_msg("labeller", "label", label);
			continue;
		}
		/* Only this process writes this label: it must stay valid. */
		if (casfs_blob_exists(s, hex) != 1)
			bad += fail_msg("labeller", "label names an absent blob", hex);
	}
	fprintf(stderr, "labeller %d: %d label changes refused because gc had removed the blob\n", me, refused);
	casfs_store_free(s);
	casfs_root_free(root);
	return bad;
}

struct check {
	casfs_store *s;
	int bad;
};

static int check_label(const char *name, void *ud)
{
	struct check *c = ud;
	char hex[CASFS_HEX_MAX], again[CASFS_HEX_MAX];
	if (casfs_label_get(c->s, name, hex) < 0)
		return 0; /* removed meanwhile */
	if (casfs_blob_exists(c->s, hex) == 1)
		return 0;
	/* Absent now: a violation unless the label moved on meanwhile. */
	if (casfs_label_get(c->s, name, again) == 0 && !strcmp(again, hex))
		c->bad += fail_msg("checker", "label names an absent blob", name);
	return 0;
}

static int collector(volatile sig_atomic_t *stop, int *passes)
{
	casfs_root *root;
	struct check c = { 0 };
	if (casfs_root_open(&root, root_path, CASFS_ROOT_NOSYNC) < 0 ||
	    casfs_store_open(&c.s, root, "race") < 0)
		return fail_msg("gc", "open", "");
	casfs_gc_opts go = { .grace_seconds = 0 };
	casfs_gc_result r;
	uint64_t removed = 0;
	while (!*stop) {
		if (casfs_gc(c.s, &go, &r) < 0)
			c.bad += fail_msg("gc", "gc failed", "");
		removed += r.blobs_removed;
		casfs_label_list(c.s, check_label, &c);
		(*passes)++;
	}
	fprintf(stderr, "gc: %d passes, %llu blobs removed\n", *passes, (unsigned long long)removed);
	casfs_store_free(c.s);
	casfs_root_free(root);
	return c.bad;
}

static volatile sig_atomic_t stop_flag;
static void on_term(int sig)
{
	(void)sig;
	stop_flag = 1;
}

int main(void)
{
	root_path = scratch_dir();
	casfs_root *root;
	IS(casfs_root_open(&root, root_path, CASFS_ROOT_NOSYNC), 0, "open root");
	IS(casfs_store_create(root, "race", CASFS_SHA256, NULL, 0), 0, "create store");
	fflush(stdout);
	pid_t lab[2], gcp;
	for (int i = 0; i < 2; i++)
		if ((lab[i] = fork()) == 0)
			_exit(labeller(i) ? 1 : 0);
	if ((gcp = fork()) == 0) {
		signal(SIGTERM, on_term);
		int passes = 0;
		int bad = collector(&stop_flag, &passes);
		_exit(bad ? 1 : (passes > 0 ? 0 : 2));
	}
	int st;
	for (int i = 0; i < 2; i++) {
		waitpid(lab[i], &st, 0);
		OK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "labeller %d saw no label naming an absent blob", i);
	}
	kill(gcp, SIGTERM);
	waitpid(gcp, &st, 0);
	OK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "gc ran and its checker saw no dangling label");

	casfs_store *s;
	IS(casfs_store_open(&s, root, "race"), 0, "open store after the race");
	struct check c = { s, 0 };
	casfs_label_list(s, check_label, &c);
	IS(c.bad, 0, "every label names a present blob at the end");
	casfs_fsck_result fr;
	IS(casfs_fsck(s, NULL, &fr), 0, "fsck clean after the race");
	OK(fr.labels_checked > 0, "labels were checked (%llu)", (unsigned long long)fr.labels_checked);
	casfs_store_free(s);
	casfs_root_free(root);
	rm_rf(root_path);
	free(root_path);
	return tap_done();
}
