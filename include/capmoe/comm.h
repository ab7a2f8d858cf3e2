/* comm.h - the process group of `--ep mpi`: R MPI processes (ranks), rank r
 * hosting experts [r*E/R, (r+1)*E/R) of every MoE layer and a share of the
 * sequences (../shared/docs/architecture.md, "Distributed layout").
 *
 * Only the MPI standard is used (Open MPI and MPICH both work). MPI is
 * initialised only when a program asks for `--ep mpi` (capmoe_comm_init);
 * without it nothing here is called and the binaries run as single
 * processes, with or without mpirun.
 *
 * Threads: MPI is initialised with MPI_THREAD_MULTIPLE when the library
 * offers it. One thread per process runs the steps (every collective
 * below); the heartbeat threads (capmoe_comm_heartbeat_start /
 * capmoe_comm_monitor_start) use their own duplicated communicator.
 *
 * Failures: the communicator returns errors instead of aborting
 * (MPI_ERRORS_RETURN), and every wait of the step thread polls with the
 * deadline set by capmoe_comm_set_deadline, so a rank that dies or hangs
 * makes the step fail with a message instead of blocking forever. The
 * heartbeats tell which rank it was.
 *
 * Ownership: the capmoe_comm object is created by main, lives until
 * capmoe_comm_finalize (or capmoe_comm_abort) and is borrowed by the model
 * and the step protocol. */
#ifndef CAPMOE_COMM_H
#define CAPMOE_COMM_H

#include <stddef.h>

#include "capmoe/common.h"

typedef struct capmoe_comm capmoe_comm;

/* MPI_Init_thread on MPI_COMM_WORLD (duplicated). Fails when MPI is already
 * finalised or the library refuses. */
int capmoe_comm_init(capmoe_comm **out, int *argc, char ***argv, capmoe_error *err);
/* Stops the heartbeat threads, MPI_Finalize, frees. NULL ok. Every rank
 * must call it (a collective). */
void capmoe_comm_finalize(capmoe_comm *c);
/* MPI_Abort: ends every rank of the job with `code` (does not return). */
void capmoe_comm_abort(capmoe_comm *c, int code);

int capmoe_comm_rank(const capmoe_comm *c);
int capmoe_comm_size(const capmoe_comm *c);
/* MPI_Get_processor_name of this rank. */
const char *capmoe_comm_host(const capmoe_comm *c);
/* Ranks running on this host (they share its cores). */
int capmoe_comm_local_size(const capmoe_comm *c);
/* 1 when MPI_THREAD_MULTIPLE was granted (heartbeats need it). */
int capmoe_comm_threads_ok(const capmoe_comm *c);

/* Absolute deadline (capmoe_now() seconds) for the step thread's waits; 0
 * means none. A wait past it fails with "timed out". */
void capmoe_comm_set_deadline(capmoe_comm *c, double deadline);

/* ---- collectives of the step thread (every rank, same order) ------------- */

/* MPI_Bcast of bytes from root. With idle = 1 the wait sleeps between polls
 * (a worker waiting for the next step costs no CPU) and ignores the
 * deadline. */
int capmoe_comm_bcast(capmoe_comm *c, void *buf, size_t bytes, int root, int idle,
                      capmoe_error *err);
/* Element-wise maximum of n values over all ranks, in place. */
int capmoe_comm_max(capmoe_comm *c, long long *v, int n, capmoe_error *err);
/* Element-wise sum of n doubles over all ranks, in place (every rank gets it). */
int capmoe_comm_sum(capmoe_comm *c, double *v, int n, capmoe_error *err);
/* Gathers every rank's bytes at root: on root *out receives a malloc'd
 * buffer with rank 0's bytes, then rank 1's, ..., and counts[r] each rank's
 * size (counts: R entries, root only); other ranks get *out = NULL. */
int capmoe_comm_gather(capmoe_comm *c, const void *send, size_t bytes, int root, void **out,
                       size_t *counts, capmoe_error *err);
/* Same as capmoe_comm_gather, but every rank receives the result. */
int capmoe_comm_allgather(capmoe_comm *c, const void *send, size_t bytes, void **out,
                          size_t *counts, capmoe_error *err);
/* MPI_Alltoall of `each` bytes per destination (send and recv hold R *
 * each bytes, rank order). */
int capmoe_comm_alltoall(capmoe_comm *c, const void *send, void *recv, size_t each,
                         capmoe_error *err);
/* MPI_Alltoallv of floats: counts and displacements in floats, R entries
 * each. *wait receives the seconds spent waiting inside the exchange. */
int capmoe_comm_alltoallv_f32(capmoe_comm *c, const float *send, const long long *scount,
                              const long long *sdispl, float *recv, const long long *rcount,
                              const long long *rdispl, double *wait, capmoe_error *err);

/* ---- heartbeats ------------------------------------------------------------- */

/* On every rank but 0: a thread that sends rank 0 this rank's progress
 * (capmoe_comm_progress) every interval_s seconds. */
int capmoe_comm_heartbeat_start(capmoe_comm *c, double interval_s, capmoe_error *err);
/* On rank 0: a thread that records when each rank was last heard of. */
int capmoe_comm_monitor_start(capmoe_comm *c, capmoe_error *err);
/* Where this rank's step thread is: step number and MoE layer (-1 between
 * layers); sent with the heartbeats. */
void capmoe_comm_progress(capmoe_comm *c, long long step, int layer);
/* On rank 0 with the monitor running: seconds since rank r was last heard
 * of (0 for rank 0 itself; -1 without a monitor), and its last progress. */
double capmoe_comm_silence(capmoe_comm *c, int r, long long *step, int *layer);
/* On rank 0: a sentence naming the ranks that look dead (silent for more
 * than `silent_s`) or behind (an older step or layer than the others), for
 * error messages; "" when every rank looks well. */
void capmoe_comm_diagnose(capmoe_comm *c, double silent_s, char *buf, size_t cap);

#endif
