/*
 * test_fullfs.c — a full disk leaves old content and labels untouched and
 * no debris behind, and the store works again once space is freed.  The
 * root is a 2 MiB tmpfs this test mounts, so it must run as root.
 */
#include "tap.h"

#include <sys/mount.h>
#include <sys/wait.h>

static char *mnt;

static int staging_entries(const char *store)
{
	char p[4096];
	snprintf(p, sizeof(p), "%s/%s/.casfs/staging", mnt, store);
	return count_entries(p);
}

static int data_entries(const char *store)
{
	char p[4096];
	snprintf(p, sizeof(p), "%s/%s/data", mnt, store);
	return count_entries(p);
}

int main(void)
{
	if (geteuid() != 0) {
		OK(0, "this test mounts a tmpfs and must run as root");
		return tap_done();
	}
	mnt = scratch_dir();
	if (mount("tmpfs", mnt, "tmpfs", MS_NOSUID | MS_NODEV, "size=2m,mode=0755") < 0) {
		OK(0, "mount a 2 MiB tmpfs on %s: %s", mnt, strerror(errno));
		return tap_done();
	}
	casfs_root *root;
	casfs_store *s;
	char old[CASFS_HEX_MAX], hex[CASFS_HEX_MAX], cur[CASFS_HEX_MAX];
	IS(casfs_root_open(&root, mnt, 0), 0, "open root on small tmpfs");
	IS(casfs_store_create(root, "st", CASFS_SHA256, NULL, 0), 0, "create store");
	IS(casfs_store_open(&s, root, "st"), 0, "open store");
	IS(casfs_label_put_fd(s, "l", open("/dev/null", O_RDONLY), NULL, old, NULL, NULL), 0, "label empty content");
	IS(casfs_blob_put(s, "old content", 11, old), 0, "store old content");
	IS(casfs_label_set(s, "l", old, NULL, NULL), 0, "label it");
	int blobs_before = data_entries("st");

	/* 1. A blob larger than the disk: ENOSPC, nothing changed. */
	size_t big = 4u << 20;
	char *data = malloc(big);
	memset(data, 'z', big);
	IS(casfs_blob_put(s, data, big, hex), -ENOSPC, "blob larger than the disk fails with ENOSPC");
	OK(strstr(casfs_error_last(), "No space") != NULL, "message says no space (%s)", casfs_error_last());
	IS(staging_entries("st"), 0, "no staging debris after ENOSPC");
	IS(data_entries("st"), blobs_before, "no new file in data/");

	/* 2. store-at-label of a too-large input through a pipe. */
	int pfd[2];
	OK(pipe(pfd) == 0, "pipe");
	pid_t pid = fork();
	if (pid == 0) {
		close(pfd[0]);
		for (size_t off = 0; off < big;) {
			ssize_t w = write(pfd[1], data + off, 65536);
			if (w <= 0)
				_exit(0);
			off += (size_t)w;
		}
		_exit(0);
	}
	close(pfd[1]);
	IS(casfs_label_put_fd(s, "l", pfd[0], NULL, hex, NULL, NULL), -ENOSPC, "store-at-label fails with ENOSPC");
	close(pfd[0]);
	waitpid(pid, NULL, 0);
	IS(casfs_label_get(s, "l", cur), 0, "label still readable");
	STR_IS(cur, old, "label still points at the old content");
	int fd = -1;
	IS(casfs_blob_open(s, old, &fd), 0, "old blob still there");
	int devnull = open("/dev/null", O_WRONLY);
	IS(casfs_blob_verify_copy(s, old, fd, devnull), 0, "old content intact (verified)");
	close(fd);
	IS(staging_entries("st"), 0, "no staging debris");

	/* 3. A disk filled to the last block: even a label write fails cleanly. */
	char filler[4096];
	snprintf(filler, sizeof(filler), "%s/filler", mnt);
	int ffd = open(filler, O_WRONLY | O_CREAT, 0600);
	while (write(ffd, data, 4096) == 4096)
		;
	close(ffd);
	IS(casfs_blob_put(s, "more", 4, hex), -ENOSPC, "small blob on a full disk: ENOSPC");
	/* A label write needs a block for its temporary file. */
	casfs_blob_put(s, "", 0, hex); /* empty blob: needs no block */
	int lr = casfs_label_set(s, "l", hex, NULL, NULL);
	IS(lr, -ENOSPC, "label change on a full disk: ENOSPC");
	IS(casfs_label_get(s, "l", cur), 0, "label readable on full disk");
	STR_IS(cur, old, "label unchanged after failed change");
	IS(staging_entries("st"), 0, "no staging debris on full disk");
	casfs_fsck_result fr;
	IS(casfs_fsck(s, NULL, &fr), 0, "fsck clean on the full disk");

	/* 4. Space freed: the same handles work again. */
	unlink(filler);
	IS(casfs_blob_put(s, "after", 5, hex), 0, "store works after space is freed");
	IS(casfs_label_set(s, "l", hex, old, NULL), 0, "label works after space is freed");
	IS(casfs_fsck(s, NULL, &fr), 0, "fsck clean at the end");

	free(data);
	close(devnull);
	casfs_store_free(s);
	casfs_root_free(root);
	if (umount(mnt) < 0)
		OK(0, "umount: %s", strerror(errno));
	rmdir(mnt);
	free(mnt);
	return tap_done();
}
