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
 */
#include "fsint.h"

#include <fcntl.h>
#include <linux/fuse.h>
#include <stddef.h>
#include <sys/uio.h>
#include <unistd.h>

static uint64_t init_unique;   /* of the kernel's INIT request; 0: none seen */
static bool kernel_offers_v2;  /* in that request's flags */
static bool init_done;         /* the reply went out */
bool fs_killpriv_v2;           /* what it said */

static __thread bool req_kill; /* the request this thread read last */

bool fs_request_kills_suidgid(void)
{
	return req_kill;
}

static void note_request(const void *buf, size_t n)
{
	const struct fuse_in_header *in = buf;
	const char *arg = (const char *)buf + sizeof(*in);
	size_t alen = n - sizeof(*in);
	req_kill = false;
	switch (in->opcode) {
	case FUSE_INIT:
		if (alen >= offsetof(struct fuse_init_in, flags) + sizeof(uint32_t)) {
			const struct fuse_init_in *ii = (const void *)arg;
			kernel_offers_v2 = (ii->flags & FUSE_HANDLE_KILLPRIV_V2) != 0;
			__atomic_store_n(&init_unique, in->unique, __ATOMIC_RELEASE);
		}
		break;
	case FUSE_WRITE:
		if (alen >= offsetof(struct fuse_write_in, write_flags) + sizeof(uint32_t))
			req_kill = (((const struct fuse_write_in *)(const void *)arg)->write_flags &
				    FUSE_WRITE_KILL_SUIDGID) != 0;
		break;
	case FUSE_SETATTR:
		if (alen >= offsetof(struct fuse_setattr_in, valid) + sizeof(uint32_t))
			req_kill = (((const struct fuse_setattr_in *)(const void *)arg)->valid &
				    FATTR_KILL_SUIDGID) != 0;
		break;
	case FUSE_OPEN:
		if (alen >= offsetof(struct fuse_open_in, open_flags) + sizeof(uint32_t))
			req_kill = (((const struct fuse_open_in *)(const void *)arg)->open_flags &
				    FUSE_OPEN_KILL_SUIDGID) != 0;
		break;
	case FUSE_CREATE:
		if (alen >= offsetof(struct fuse_create_in, open_flags) + sizeof(uint32_t))
			req_kill = (((const struct fuse_create_in *)(const void *)arg)->open_flags &
				    FUSE_OPEN_KILL_SUIDGID) != 0;
		break;
	default:
		break;
	}
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
			if (out->error == 0 && kernel_offers_v2 &&
			    iov[1].iov_len >= offsetof(struct fuse_init_out, flags) + sizeof(uint32_t)) {
				/* libfuse's own reply, on its stack until this returns. */
				struct fuse_init_out *io = iov[1].iov_base;
				io->flags |= FUSE_HANDLE_KILLPRIV_V2;
				fs_killpriv_v2 = true;
			}
			__atomic_store_n(&init_done, true, __ATOMIC_RELEASE);
		}
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
