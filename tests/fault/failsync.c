/*
 * failsync.c — fault injection for the integration tests: preloaded into
 * the daemon (LD_PRELOAD), it makes syncfs(2) fail with EIO while the file
 * named by $CASFS_FAIL_SYNCFS exists, as a disk that lost writes would
 * report them.  Otherwise the real syncfs runs.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

int syncfs(int fd)
{
	static int (*real)(int);
	if (!real)
		real = (int (*)(int))dlsym(RTLD_NEXT, "syncfs");
	const char *flag = getenv("CASFS_FAIL_SYNCFS");
	if (flag && *flag && access(flag, F_OK) == 0) {
		errno = EIO;
		return -1;
	}
	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	return real(fd);
}
