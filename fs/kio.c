/*
 * kio.c — the daemon's reads of requests from /dev/fuse and writes of
 * replies, through libfuse's custom I/O hooks.
 *
 * Why: before every write(2) to a FUSE file the kernel asks the daemon
 * for the file's security.capability attribute (file_remove_privs), one
 * more round trip per write: 8,192 per GiB copied by cp.  A filesystem
 * that answers FUSE_INIT with FUSE_HANDLE_KILLPRIV_V2 gets SB_NOSEC: the
 * kernel asks once per inode, and the filesystem itself clears the
 * set-user-ID and set-group-ID bits where the kernel says so (a flag in
 * the WRITE, SETATTR and OPEN/CREATE requests).  libfuse 3.14 (Debian 12)
 * cannot ask for it, so the INIT reply is amended here, only when the
 * kernel offered the flag; and the kill flags of each request are noted
 * for its handler, which runs on the thread that read it
 * (fs_request_kills_suidgid()).
 *
 * And FUSE passthrough (Linux 6.9, FUSE_PASSTHROUGH; libfuse 3.16): a
 * blob is immutable, so an open of data/<hash> can hand the kernel the
 * blob's file (FUSE_DEV_IOC_BACKING_OPEN) and the kernel reads it from
 * there, from the backing filesystem's page cache, never asking the
 * daemon: reads as fast as the backing filesystem's.  The INIT reply
 * asks for it when the kernel offers it, and the open reply carries the
 * backing file's id (fs_reply_backing()).  The kernel's definitions are
 * newer than Debian 12's <linux/fuse.h>: spelled out below.
 */
#include "fsint.h"

#include <fcntl.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/capability.h>
#include <linux/fuse.h>
#include <sys/syscall.h>
#include <stddef.h>
#include <sys/uio.h>
#include <unistd.h>

#define K_FUSE_PASSTHROUGH_HI (1U << (37 - 32)) /* FUSE_PASSTHROUGH, in flags2 */
#define K_FOPEN_PASSTHROUGH (1U << 7)
/* Offset in struct fuse_init_out: after flags2 (Debian 12's header has
 * unused[0] there). */
#define K_INIT_OUT_MAX_STACK_DEPTH (offsetof(struct fuse_init_out, flags2) + sizeof(uint32_t))
struct k_backing_map {
	int32_t fd;
	uint32_t flags;
	uint64_t padding;
};
#define K_DEV_IOC_BACKING_OPEN _IOW(229, 1, struct k_backing_map)
#define K_DEV_IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)
struct k_open_out { /* struct fuse_open_out since 7.40 */
	uint64_t fh;
	uint32_t open_flags;
	int32_t backing_id;
};

static uint64_t init_unique;   /* of the kernel's INIT request; 0: none seen */
static bool kernel_offers_v2;  /* in that request's flags */
static bool kernel_offers_pt;  /* FUSE_PASSTHROUGH */
static bool init_done;         /* the reply went out */
bool fs_killpriv_v2;           /* what it said */
bool fs_passthrough;

static __thread bool req_kill; /* the request this thread read last */
static __thread int reply_backing; /* for the open reply this thread sends next */

int fs_backing_open(int fd)
{
	struct k_backing_map map = { .fd = fd };
	int id = ioctl(fuse_session_fd(fs.se), K_DEV_IOC_BACKING_OPEN, &map);
	return id > 0 ? id : id == 0 ? -EINVAL : -errno;
}

void fs_backing_close(int id)
{
	uint32_t u = (uint32_t)id;
	ioctl(fuse_session_fd(fs.se), K_DEV_IOC_BACKING_CLOSE, &u);
}

void fs_reply_backing(int id)
{
	reply_backing = id;
}

bool fs_request_kills_suidgid(void)
{
	return req_kill;
}

/* Whether the request's argument, a T, is long enough to have field
 * and has flag set in it. */
#define ARG_FLAG(T, field, flag) \
	(alen >= offsetof(T, field) + sizeof(uint32_t) && (((const T *)(const void *)arg)->field & (flag)) != 0)

static void note_request(const void *buf, size_t n)
{
	const struct fuse_in_header *in = buf;
	const char *arg = (const char *)buf + sizeof(*in);
	size_t alen = n - sizeof(*in);
	req_kill = false;
	switch (in->opcode) {
	case FUSE_INIT:
		kernel_offers_v2 = ARG_FLAG(struct fuse_init_in, flags, FUSE_HANDLE_KILLPRIV_V2);
		kernel_offers_pt = ARG_FLAG(struct fuse_init_in, flags, FUSE_INIT_EXT) &&
				   ARG_FLAG(struct fuse_init_in, flags2, K_FUSE_PASSTHROUGH_HI);
		__atomic_store_n(&init_unique, in->unique, __ATOMIC_RELEASE);
		break;
	case FUSE_WRITE:
		req_kill = ARG_FLAG(struct fuse_write_in, write_flags, FUSE_WRITE_KILL_SUIDGID);
		break;
	case FUSE_SETATTR:
		req_kill = ARG_FLAG(struct fuse_setattr_in, valid, FATTR_KILL_SUIDGID);
		break;
	case FUSE_OPEN:
		req_kill = ARG_FLAG(struct fuse_open_in, open_flags, FUSE_OPEN_KILL_SUIDGID);
		break;
	case FUSE_CREATE:
		req_kill = ARG_FLAG(struct fuse_create_in, open_flags, FUSE_OPEN_KILL_SUIDGID);
		break;
	default:
		break;
	}
}

/* FUSE_DEV_IOC_BACKING_OPEN needs CAP_SYS_ADMIN in the initial user
 * namespace: a daemon without it does not ask for passthrough (each
 * open would fail, and its blob be read uncached). */
static bool may_pass_through(void)
{
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct data[2];
	if (syscall(SYS_capget, &hdr, data) != 0 || !(data[CAP_SYS_ADMIN / 32].effective & (1U << (CAP_SYS_ADMIN % 32))))
		return false;
	FILE *f = fopen("/proc/self/uid_map", "re");
	unsigned long a = 1, b = 1, n = 0;
	bool init_ns = f && fscanf(f, "%lu %lu %lu", &a, &b, &n) == 3 && a == 0 && b == 0 && n == 4294967295UL;
	if (f)
		fclose(f);
	return init_ns;
}

static ssize_t kio_read(int fd, void *buf, size_t len, void *ud)
{
	(void)ud;
	ssize_t n = read(fd, buf, len);
	if (n >= (ssize_t)sizeof(struct fuse_in_header))
		note_request(buf, (size_t)n);
	return n;
}

static ssize_t kio_writev(int fd, struct iovec *iov, int count, void *ud)
{
	(void)ud;
	if (!__atomic_load_n(&init_done, __ATOMIC_ACQUIRE) && count >= 2 &&
	    iov[0].iov_len == sizeof(struct fuse_out_header)) {
		const struct fuse_out_header *out = iov[0].iov_base;
		uint64_t u = __atomic_load_n(&init_unique, __ATOMIC_ACQUIRE);
		if (u && out->unique == u) {
			/* libfuse's own reply, on its stack until this returns. */
			struct fuse_init_out *io = iov[1].iov_base;
			if (out->error == 0 && kernel_offers_v2 &&
			    iov[1].iov_len >= offsetof(struct fuse_init_out, flags) + sizeof(uint32_t)) {
				io->flags |= FUSE_HANDLE_KILLPRIV_V2;
				fs_killpriv_v2 = true;
			}
			/* Without writeback caching (casfs never asks for it),
			 * over a filesystem that stacks on none (depth 1). */
			if (out->error == 0 && kernel_offers_pt && (io->flags & FUSE_INIT_EXT) &&
			    !(io->flags & FUSE_WRITEBACK_CACHE) && !fs.no_passthrough && may_pass_through() &&
			    iov[1].iov_len >= K_INIT_OUT_MAX_STACK_DEPTH + sizeof(uint32_t)) {
				io->flags2 |= K_FUSE_PASSTHROUGH_HI;
				uint32_t depth = 1;
				memcpy((char *)io + K_INIT_OUT_MAX_STACK_DEPTH, &depth, sizeof(depth));
				fs_passthrough = true;
				fs_log(LOG_INFO, "reads of blobs pass through to their backing files (FUSE passthrough)");
			}
			__atomic_store_n(&init_done, true, __ATOMIC_RELEASE);
		}
	}
	if (reply_backing > 0) {
		/* The reply of an open that fs_reply_backing() marked. */
		if (count >= 2 && iov[0].iov_len == sizeof(struct fuse_out_header) &&
		    ((const struct fuse_out_header *)iov[0].iov_base)->error == 0 &&
		    iov[1].iov_len == sizeof(struct k_open_out)) {
			struct k_open_out *oo = iov[1].iov_base;
			oo->open_flags = (oo->open_flags & ~(uint32_t)FOPEN_KEEP_CACHE) | K_FOPEN_PASSTHROUGH;
			oo->backing_id = reply_backing;
		}
		reply_backing = 0;
	}
	return writev(fd, iov, count);
}

static ssize_t kio_splice_send(int fdin, off_t *offin, int fdout, off_t *offout, size_t len,
			       unsigned int flags, void *ud)
{
	(void)ud;
	return splice(fdin, offin, fdout, offout, len, flags);
}

int fs_kio_attach(struct fuse_session *se)
{
	/* splice_send keeps replies of reads spliced from the blob.  No
	 * splice_receive: every request is read, and seen, by kio_read
	 * (casfs never asks for FUSE_CAP_SPLICE_READ). */
	static const struct fuse_custom_io io = {
		.read = kio_read,
		.writev = kio_writev,
		.splice_send = kio_splice_send,
	};
	return fuse_session_custom_io(se, &io, fuse_session_fd(se));
}
