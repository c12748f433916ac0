/*
 * fs.h — the FUSE daemon's entry point, called by `casfs mount`.
 */
#ifndef CASFS_FS_H
#define CASFS_FS_H

/* argv[0] is "mount"; then ROOT MOUNTPOINT [-f] [-d] [-s] [-o opt,...].
 * Returns the process exit status. */
int casfs_fs_main(int argc, char **argv);

#endif
