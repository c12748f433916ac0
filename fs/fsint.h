/*
 * fsint.h — what the files of the FUSE daemon share.
 *
 *   main.c     options, session set-up, the loop, teardown
 *   nodes.c    inode table and open stores
 *   ops.c      request handlers, grouped by the kind of directory they
 *              serve: root, store, data/, labels/, incoming/
 *   kio.c      reading requests and writing replies (libfuse's custom
 *              I/O): FUSE_HANDLE_KILLPRIV_V2
 */
#ifndef CASFS_FSINT_H
#define CASFS_FSINT_H

#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>

#include <casfs.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <syslog.h>

enum kind {
	K_ROOT,  /* the mountpoint: one directory per store */
	K_STORE, /* <store>/: data, labels, incoming */
	K_DATA,  /* <store>/data/ */
	K_BLOB,  /* <store>/data/<hash> */
	K_LDIR,  /* <store>/labels/ ("" name) and its subdirectories */
	K_LINK,  /* <store>/labels/<name>: a symlink to ../data/<hash> */
	K_IDIR,  /* <store>/incoming/ ("" name) and its subdirectories */
	K_IFILE, /* <store>/incoming/<name>: the label as a writable file */
};

struct fstore {
	char id[CASFS_ID_MAX + 1];
	casfs_store *s;
	int refs;
	bool dead;
	int session;           /* casfs_store_session_begin()'s token */
	uid_t uid;             /* owner and mode of the store directory */
	gid_t gid;
	mode_t mode;
	/* After an unclean stop of an earlier daemon: blobs stored since then
	 * are hashed once before they are served (SPEC §6). */
	int64_t suspect_since; /* 0: nothing to check */
	bool sync_failed;      /* logged (fstore_sync) */
	pthread_mutex_t vmu;
	char (*verified)[CASFS_HEX_MAX];
	size_t nverified, capverified;
	struct fstore *next;
};

/* Makes what the store published durable now (SPEC §6: fsync(2), and the
 * flusher); 0 at once if nothing is pending. */
int fstore_sync(struct fstore *st);
int fstore_sync_all(void); /* every store open, the first error */
/* The flusher: a thread that makes every store's changes durable within
 * fs.commit_ns of being made (the default, without -o sync). */
int fs_flusher_start(void);
void fs_flusher_stop(void);

/* 0 if the blob open on fd may be served; -EIO (and the blob quarantined)
 * if it was stored since an unclean stop and no longer matches its name. */
int fstore_check_blob(struct fstore *st, const char *hex, int fd);

struct version;

struct node {
	fuse_ino_t ino;
	enum kind kind;
	struct fstore *st;
	char *name;            /* hash, or label path ("" = top) */
	uint64_t nlookup;      /* the kernel's references */
	uint64_t pins;         /* ours: open versions */
	struct version *cur;   /* K_IFILE: the version new handles share */
	/* Set when the name was removed or replaced (rm, mv over it) while
	 * the kernel still knows the inode: it then keeps showing what it
	 * was, like an unlinked inode, and is never written again. */
	bool gone;
	char frozen[CASFS_HEX_MAX]; /* its digest then ("" for none) */
	struct dirlist *listing; /* directories: the entries kept (ops.c) */
	/* K_BLOB under FUSE passthrough: the backing file's id while the
	 * kernel has the blob open, shared by its opens (the kernel takes
	 * one backing file per inode), and their number (ops.c). */
	int backing, backing_refs;
	struct node *next_ino, *next_key;
};

struct fs_config {
	casfs_root *root;
	char *root_path;
	casfs_algo new_algo;   /* for mkdir of a store */
	bool read_only;
	bool remote;           /* a rados: root (root_path is its cache) */
	bool sync;             /* -o sync: durable before close(2) returns */
	bool no_passthrough;   /* -o nopassthrough: blobs read through the daemon */
	int64_t commit_ns;     /* -o commit=: otherwise synced this often */
	bool foreground;
	bool debug;
	struct fuse_session *se;
	uid_t uid;
	gid_t gid;
};

extern struct fs_config fs;

/* kio.c: after fuse_session_mount(), before the loop.  0 or -errno. */
int fs_kio_attach(struct fuse_session *se);
/* Whether the request being handled by this thread tells the filesystem
 * to clear set-user-ID and set-group-ID (FUSE_HANDLE_KILLPRIV_V2). */
bool fs_request_kills_suidgid(void);
extern bool fs_killpriv_v2; /* the kernel agreed to it */
/* FUSE passthrough: the kernel reads an open file from a backing file. */
extern bool fs_passthrough; /* agreed on at INIT */
int fs_backing_open(int fd); /* its id (> 0) or -errno */
void fs_backing_close(int id);
/* The next reply this thread sends, an open's, hands the kernel id. */
void fs_reply_backing(int id);

void fs_log(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The filesystem identity of this thread for changes to the backing store
 * (a no-op unless the daemon runs as root). */
void fs_identity(uid_t uid, gid_t gid);
void fs_identity_current(uid_t *uid, gid_t *gid);

struct node *node_get(fuse_ino_t ino);
/* Finds or makes the node and counts one kernel lookup on it. */
struct node *node_lookup(enum kind k, struct fstore *st, const char *name);
void node_forget(fuse_ino_t ino, uint64_t n);
void node_pin(struct node *x);
/* Frees the listing a directory node keeps (ops.c). */
void node_drop_listing(struct node *x);
void node_unpin(struct node *x);
/* A copy of the node's current name (it changes on rename); free it. */
char *node_name(struct node *x);
/* After a rename of labels from -> to through one side (incoming/ or
 * labels/): that side's nodes at to (replaced) become gone, and its nodes
 * at or under from take the new names.  Returns the replaced
 * incoming/ node, pinned, if there is one (unpin it). */
struct node *node_renamed(struct fstore *st, bool incoming, const char *from, const char *to,
			  const char *to_digest);
/* After the label name was removed through one side: that side's nodes
 * become gone, remembering digest.  Returns its incoming/ node, pinned, if there is one (unpin it). */
struct node *node_gone(struct fstore *st, bool incoming, const char *name, const char *digest);

int fstore_get(const char *id, struct fstore **out);
void fstore_ref(struct fstore *st);
void fstore_unref(struct fstore *st);
void fstore_mark_dead(const char *id);
void fstore_close_all(void);

extern const struct fuse_lowlevel_ops casfs_fs_ops;
/* Frees what the kernel left open at unmount. */
void fs_ops_teardown(void);

#endif
