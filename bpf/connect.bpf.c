// SPDX-License-Identifier: Apache-2.0
/*
 * connect.bpf.c: connect() calls that pass in-kernel filters, for ociresolve's socket tracer.
 *
 * Compiled by BCC from tracer/probe.py: BPF(src_file=..., cflags=[...]). Only the tracepoint's
 * arguments and BPF helpers are used, never kernel struct reads: the headers BCC compiles
 * against may not match the running kernel, and struct reads then give garbage.
 *
 * Filters (all set from user space through the maps below, before events flow):
 *   config[0].families  bit n set: address family n passes (n < 64); OCI_F_OTHER_FAMILIES for
 *                       the rest. An unset config (all zero) lets nothing through.
 *   config[0].min_addrlen  pre-filter on the tracepoint's addrlen, before the sockaddr is read:
 *                       below it, no traced family and path can match (user space computes it;
 *                       each family's matching addrlens are all those from a minimum up).
 *   unix_paths          LPM trie over sun_path bytes: an exact path is stored with its
 *                       terminating NUL, a prefix without it; prefix length 0 matches all.
 *   ports               TCP/UDP destination ports (host order), if OCI_F_PORTS.
 *   deny_comms          thread names excluded: their connects are reported (and followed)
 *                       marked OCI_EVF_EXCLUDED in kind's high byte, not dropped, because a
 *                       process in a container may name itself anything; user space drops
 *                       them only when the caller is a host process.
 *   allow_comms         if OCI_F_ALLOW_COMMS, only these thread names are reported.
 *   config[0].ignore_tgid  a process (the daemon itself) whose connects are never reported nor
 *                       followed; 0: none.
 *
 * Delivery: a BPF ring buffer, submitted without wakeup (user space consumes every few ms),
 * with a forced wakeup every config[0].wakeup_every-th event of a CPU; or, with -DOCI_PERF_BUFFER, a
 * perf buffer for kernels before 5.8. stats[OCI_STAT_LOST] counts events dropped because the
 * buffer was full; stats[OCI_STAT_MATCHED] counts events that passed the filters.
 *
 * Lifetimes (compiled in with -DOCI_LIFETIMES): the fd of each reported connect is followed.
 * sys_exit_connect keeps it in open_fds when the connect succeeded (or is in progress), else
 * reports OCI_EV_FAILED; sys_enter_close of a kept fd reports OCI_EV_CLOSE; the exit of a
 * process holding kept fds reports OCI_EV_EXIT (the kernel closes them without close()). Every
 * close() on the host then costs a hash lookup: only the deprecation reporter asks for it.
 *
 * Activity (-DOCI_ACTIVITY, needs OCI_LIFETIMES and the sock:sock_send_length tracepoint, which
 * older kernels lack: user space checks tracefs before compiling and leaves it out then):
 * OCI_EV_SEND when a followed unix connection sends something, at most one per connection per
 * config[0].activity_interval_ns, so that user space can tell which connection sent a request
 * at a given moment. The tracepoint fires in sock_sendmsg for every socket send (write, writev,
 * sendmsg, sendto, sendmmsg on a socket), never for a file write, and gives the socket (sk, an
 * opaque identity here, never dereferenced), its family and the bytes sent. So:
 *   - a send that is not unix, or sent nothing, returns after two comparisons;
 *   - sk_conns binds a socket to a followed connection, and sk_filter counts its sockets per
 *     slot of a hash of sk: an unrelated unix send finds its slot empty with an array lookup
 *     (inlined by the verifier), no hash lookup. A hit within the interval of the
 *     connection's last report returns; else, if the connection's process is still there
 *     (after its exit the sk may be a new socket at the same address: then it is learned
 *     anew), it reports the connection's tgid and fd as its connect reported them, whichever
 *     process sends (a child that inherited the socket), with the sender's tid and cgroup id;
 *   - a miss learns: the fd<->sk binding is invisible to a socket tracepoint, so
 *     sys_exit_connect notes per process the latest connected fd not yet bound (unbound, an
 *     array slot per tgid), and that process's next unix send on a socket not in sk_conns
 *     binds that socket to it (and reports). A process without such an fd (every unrelated
 *     one, the ignored one too) returns after that second array lookup. gRPC writes its
 *     HTTP/2 preface right after connecting, so this binds right. It binds wrong when the
 *     process sends on another unix socket between a connect and that connect's first send
 *     (the same process, so the same identity for the correlator), and misses when it
 *     connects twice before sending (the first connection is never bound: its sends go
 *     unreported);
 *   - close of a followed fd (its sk is in open_fds' value), a reconnect on a followed fd and
 *     the process's exit (unbound only; sk_conns is an LRU and is checked on hit) unbind.
 * Measured (bench/activity.py): an unrelated unix send adds about what an empty program on
 * this tracepoint adds (two hash lookups there instead: about 1.8 times that, in a short run).
 * The rate limit's read-update of last_ns is not atomic: two CPUs may both report a send.
 *
 * tracer/_wire.py mirrors struct oci_connect_event and the constants: change both together.
 */

#define OCI_AF_UNIX 1
#define OCI_AF_INET 2
#define OCI_AF_INET6 10

#define OCI_F_OTHER_FAMILIES 1
#define OCI_F_PORTS 2
#define OCI_F_ALLOW_COMMS 4

#define OCI_STAT_MATCHED 0
#define OCI_STAT_LOST 1

/* struct oci_connect_event.kind */
#define OCI_EV_CONNECT 0
#define OCI_EV_FAILED 1
#define OCI_EV_CLOSE 2
#define OCI_EV_EXIT 3
#define OCI_EV_SEND 4
/* Flags in kind's high byte. */
#define OCI_EVF_EXCLUDED 0x100 /* a connect by a thread whose name is in deny_comms */

#define OCI_EINPROGRESS 115

#define OCI_UNIX_PATH_MAX 108
#define OCI_SOCKADDR_MAX (2 + OCI_UNIX_PATH_MAX)
#define OCI_SOCKADDR_IN_LEN 8   /* family, port, address: what the kernel requires */
#define OCI_SOCKADDR_IN6_LEN 24 /* family, port, flow info, address */
#define OCI_COMM_LEN 16

#ifndef OCI_RING_PAGES
#define OCI_RING_PAGES 1024
#endif

struct oci_connect_event {
    u64 time_ns;
    u64 cgroup_id;
    u32 tgid;
    u32 tid;
    u16 family;
    u16 port;    /* host byte order; 0 for unix sockets */
    u16 addrlen; /* bytes of addr used */
    u16 kind;    /* OCI_EV_* (low byte): a connect, or (with lifetimes) what became of one;
                  * OCI_EVF_* (high byte) */
    char comm[OCI_COMM_LEN];
    /* The sockaddr after its family, zero padded: unix, sun_path as passed; inet, the port
     * (network order) then the 4-byte address; inet6, the port, the flow info, then the
     * 16-byte address. */
    u8 addr[OCI_UNIX_PATH_MAX];
    s32 fd; /* the connecting socket (OCI_EV_SEND: the followed connection's); OCI_EV_EXIT, -1 */
};

struct oci_config {
    u64 families;
    u32 flags;
    u32 wakeup_every; /* per CPU, force a wakeup every n-th event (0: never) */
    u32 min_addrlen;  /* addrlen (as unsigned) below this cannot match: skip the read */
    u32 ignore_tgid;  /* connects of this process are neither reported nor followed (0: none) */
    u64 activity_interval_ns; /* OCI_EV_SEND at most once per connection per this */
};

struct oci_unix_key {
    u32 prefixlen; /* in bits, as BPF_MAP_TYPE_LPM_TRIE wants */
    u8 path[OCI_UNIX_PATH_MAX];
};

struct oci_comm_key {
    char comm[OCI_COMM_LEN];
};

BPF_ARRAY(config, struct oci_config, 1);
BPF_LPM_TRIE(unix_paths, struct oci_unix_key, u8, 64);
BPF_HASH(ports, u16, u8, 64);
BPF_HASH(deny_comms, struct oci_comm_key, u8, 64);
BPF_HASH(allow_comms, struct oci_comm_key, u8, 64);
BPF_PERCPU_ARRAY(stats, u64, 2);

#if defined(OCI_ACTIVITY) && !defined(OCI_LIFETIMES)
#error "OCI_ACTIVITY needs OCI_LIFETIMES"
#endif

#ifdef OCI_LIFETIMES
struct oci_fd_key {
    u32 tgid;
    s32 fd;
};
BPF_TABLE("lru_hash", u64, s32, pending, 10240);                 /* thread -> fd, in connect() */
/* Reported, still open -> its socket (sk) once activity bound it, else 0. */
BPF_TABLE("lru_hash", struct oci_fd_key, u64, open_fds, 65536);
BPF_TABLE("lru_hash", u32, u32, open_per_process, 16384);          /* tgid -> open fds kept */
#endif

#ifdef OCI_ACTIVITY
#define OCI_SLOTS 16384 /* a power of two */
struct oci_sk_conn {
    u32 tgid; /* the followed connection, as its connect reported it */
    s32 fd;
    u64 last_ns; /* its last OCI_EV_SEND */
};
BPF_TABLE("lru_hash", u64, struct oci_sk_conn, sk_conns, 65536); /* sk -> its connection */
/* How many sockets of sk_conns hash to each slot (oci_sk_slot): a send whose slot is 0 is not
 * followed, found without a hash lookup (an array lookup is inlined by the verifier). An entry
 * the LRU evicts leaves its slot counted: a later send there pays the hash lookup, no more. */
BPF_ARRAY(sk_filter, u32, OCI_SLOTS);
/* Slot tgid % OCI_SLOTS: tgid << 32 | fd of that process's latest followed fd not yet bound;
 * 0: none. Two processes in the same slot between a connect and its first send: the later
 * wins, the earlier's connection is not bound (rare: that window is microseconds). */
BPF_ARRAY(unbound, u64, OCI_SLOTS);

static __always_inline u32 oci_sk_slot(u64 sk)
{
    /* Fibonacci hashing of the socket's address (its low 6 bits: slab alignment). */
    return ((sk >> 6) * 0x9E3779B97F4A7C15ULL) >> (64 - 14);
}

static __always_inline void oci_sk_unbind(u64 sk)
{
    if (sk_conns.delete(&sk) != 0)
        return; /* evicted already: its slot stays counted */
    u32 slot = oci_sk_slot(sk);
    u32 *count = sk_filter.lookup(&slot);
    if (count && *count > 0)
        __sync_fetch_and_add(count, -1);
}

static __always_inline void oci_unbound_clear(u32 tgid, u64 if_equal, bool any_fd)
{
    u32 slot = tgid & (OCI_SLOTS - 1);
    u64 *latest = unbound.lookup(&slot);
    if (latest && (any_fd ? *latest >> 32 == tgid : *latest == if_equal))
        *latest = 0;
}
#endif

#ifdef OCI_PERF_BUFFER
BPF_PERF_OUTPUT(events);
BPF_PERCPU_ARRAY(scratch, struct oci_connect_event, 1);
#else
BPF_RINGBUF_OUTPUT(events, OCI_RING_PAGES);
#endif

static __always_inline u64 oci_count(u32 stat)
{
    u64 *value = stats.lookup(&stat);
    if (!value)
        return 0;
    *value += 1;
    return *value;
}

static __always_inline bool oci_family_wanted(const struct oci_config *cfg, u16 family)
{
    if (family < 64)
        return (cfg->families >> family) & 1;
    return cfg->flags & OCI_F_OTHER_FAMILIES;
}

/* Reads the user's sockaddr (at most 110 bytes) in one bpf_probe_read_user: each read costs
 * about 100 ns on the test VMs, so one read serves every filter. It lands at byte 2 of the LPM
 * key so that sun_path falls on key->path: the family fills bytes 2-3 of prefixlen (set after
 * the read), and for inet/inet6 key->path holds the sockaddr after its family (port first).
 * Returns the family, or -1 when the read fails. */
static __always_inline int oci_read_sockaddr(const u8 *uaddr, int addrlen, struct oci_unix_key *key)
{
    u64 len = (u32)addrlen;
    if (len > OCI_SOCKADDR_MAX)
        len = OCI_SOCKADDR_MAX;
    /* Make the bound visible to the verifier whatever clang did with the comparison. */
    asm volatile("%[len] &= 0x7f" : [len] "+r"(len));
    if (len < 2 || bpf_probe_read_user((u8 *)key + 2, len, uaddr) != 0)
        return -1;
    return ((u16 *)key)[1];
}

/* Applies the address filters to what oci_read_sockaddr() read. Returns the number of
 * address bytes to report (sun_path bytes; the sockaddr's bytes after its family for inet and
 * inet6), or -1 when the call is filtered out. */
static __always_inline int oci_address_wanted(const struct oci_config *cfg, int addrlen,
                                              u16 family, struct oci_unix_key *key, u16 *port)
{
    key->prefixlen = OCI_UNIX_PATH_MAX * 8;
    if (family == OCI_AF_UNIX) {
        if (!unix_paths.lookup(key))
            return -1;
        return addrlen - 2 > OCI_UNIX_PATH_MAX ? OCI_UNIX_PATH_MAX : addrlen - 2;
    }
    if (family != OCI_AF_INET && family != OCI_AF_INET6)
        return 0;
    int need = family == OCI_AF_INET ? OCI_SOCKADDR_IN_LEN : OCI_SOCKADDR_IN6_LEN;
    if (addrlen < need)
        return -1;
    *port = (key->path[0] << 8) | key->path[1];
    if ((cfg->flags & OCI_F_PORTS) && !ports.lookup(port))
        return -1;
    return need - 2;
}

static __always_inline bool oci_comm_allowed(const struct oci_config *cfg,
                                             const struct oci_comm_key *comm)
{
    return !(cfg->flags & OCI_F_ALLOW_COMMS) || allow_comms.lookup((struct oci_comm_key *)comm);
}

static __always_inline void oci_fill(struct oci_connect_event *e, u16 family, u16 port,
                                     int addrlen, const struct oci_unix_key *key,
                                     const struct oci_comm_key *comm, int fd, u64 pid_tgid,
                                     u16 kind)
{
    e->time_ns = bpf_ktime_get_ns();
    e->cgroup_id = bpf_get_current_cgroup_id();
    e->tgid = pid_tgid >> 32;
    e->tid = (u32)pid_tgid;
    e->family = family;
    e->port = port;
    e->addrlen = addrlen;
    e->kind = kind;
    __builtin_memcpy(e->comm, comm->comm, OCI_COMM_LEN);
    __builtin_memcpy(e->addr, key->path, OCI_UNIX_PATH_MAX);
    e->fd = fd;
}

TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
    u32 zero = 0;
    struct oci_config *cfg = config.lookup(&zero);
    if (!cfg)
        return 0;

    int addrlen = args->addrlen;
    /* Free pre-filter: the read below costs about 100 ns, the comparison nothing. */
    if ((u32)addrlen < cfg->min_addrlen)
        return 0;

    struct oci_unix_key key = {};
    int family = oci_read_sockaddr((const u8 *)args->uservaddr, addrlen, &key);
    if (family < 0 || !oci_family_wanted(cfg, family))
        return 0;
    u16 port = 0;
    int len = oci_address_wanted(cfg, addrlen, family, &key, &port);
    if (len < 0)
        return 0;

    u64 pid_tgid = bpf_get_current_pid_tgid();
    if (cfg->ignore_tgid && pid_tgid >> 32 == cfg->ignore_tgid)
        return 0;
    struct oci_comm_key comm = {};
    bpf_get_current_comm(&comm.comm, sizeof(comm.comm));
    if (!oci_comm_allowed(cfg, &comm))
        return 0;
    u16 kind = OCI_EV_CONNECT;
    if (deny_comms.lookup(&comm))
        kind |= OCI_EVF_EXCLUDED;

    u64 matched = oci_count(OCI_STAT_MATCHED);
#ifdef OCI_PERF_BUFFER
    struct oci_connect_event *e = scratch.lookup(&zero);
    if (!e)
        return 0;
    oci_fill(e, family, port, len, &key, &comm, args->fd, pid_tgid, kind);
    if (events.perf_submit(args, e, sizeof(*e)) != 0)
        oci_count(OCI_STAT_LOST);
#else
    struct oci_connect_event *e = events.ringbuf_reserve(sizeof(struct oci_connect_event));
    if (!e) {
        oci_count(OCI_STAT_LOST);
        return 0;
    }
    oci_fill(e, family, port, len, &key, &comm, args->fd, pid_tgid, kind);
    /* BCC 0.26 cannot call bpf_ringbuf_query() on a ring buffer map, so the backlog is
     * bounded by counting: each CPU forces a wakeup every wakeup_every-th event. */
    u32 every = cfg->wakeup_every;
    u64 flags = BPF_RB_NO_WAKEUP;
    if (every && matched % every == 0)
        flags = BPF_RB_FORCE_WAKEUP;
    events.ringbuf_submit(e, flags);
#endif
#ifdef OCI_LIFETIMES
    s32 fd = args->fd;
    pending.update(&pid_tgid, &fd);
#endif
    return 0;
}

#ifdef OCI_LIFETIMES
/* An event after a connect: its time, process, kind and fd; a send's cgroup id and family. */
static __always_inline void oci_report(void *ctx, u16 kind, u32 tgid, s32 fd, u64 time_ns,
                                       u64 cgroup_id, u16 family)
{
#ifdef OCI_PERF_BUFFER
    u32 zero = 0;
    struct oci_connect_event *e = scratch.lookup(&zero);
#else
    struct oci_connect_event *e = events.ringbuf_reserve(sizeof(struct oci_connect_event));
#endif
    if (!e) {
        oci_count(OCI_STAT_LOST);
        return;
    }
    __builtin_memset(e, 0, sizeof(*e));
    e->time_ns = time_ns;
    e->cgroup_id = cgroup_id;
    e->tgid = tgid;
    e->tid = (u32)bpf_get_current_pid_tgid();
    e->family = family;
    e->kind = kind;
    e->fd = fd;
#ifdef OCI_PERF_BUFFER
    if (events.perf_submit(ctx, e, sizeof(*e)) != 0)
        oci_count(OCI_STAT_LOST);
#else
    events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
#endif
}

/* A lifetime event: only its time, process, kind and fd mean anything. */
static __always_inline void oci_lifetime(void *ctx, u16 kind, u32 tgid, s32 fd)
{
    oci_report(ctx, kind, tgid, fd, bpf_ktime_get_ns(), 0, 0);
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect)
{
    u64 id = bpf_get_current_pid_tgid();
    s32 *pending_fd = pending.lookup(&id);
    if (!pending_fd)
        return 0;
    struct oci_fd_key key = {.tgid = id >> 32, .fd = *pending_fd};
    pending.delete(&id);
    long ret = args->ret;
    if (ret == 0 || ret == -OCI_EINPROGRESS) {
        u64 *old = open_fds.lookup(&key);
        if (old) {
            /* The fd was followed and reused without a close() seen (dup2, close_range). */
#ifdef OCI_ACTIVITY
            u64 sk = *old;
            if (sk)
                oci_sk_unbind(sk);
#endif
        } else {
            u32 zero = 0;
            u32 *count = open_per_process.lookup_or_try_init(&key.tgid, &zero);
            if (count)
                __sync_fetch_and_add(count, 1);
        }
        u64 unbound_sk = 0;
        open_fds.update(&key, &unbound_sk);
#ifdef OCI_ACTIVITY
        u32 slot = key.tgid & (OCI_SLOTS - 1);
        u64 *latest = unbound.lookup(&slot);
        if (latest)
            *latest = (u64)key.tgid << 32 | (u32)key.fd;
#endif
    } else {
        oci_lifetime(args, OCI_EV_FAILED, key.tgid, key.fd);
    }
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_close)
{
    struct oci_fd_key key = {.tgid = bpf_get_current_pid_tgid() >> 32, .fd = args->fd};
    u64 *kept = open_fds.lookup(&key);
    if (!kept)
        return 0;
#ifdef OCI_ACTIVITY
    u64 sk = *kept;
    if (sk)
        oci_sk_unbind(sk);
    else
        oci_unbound_clear(key.tgid, (u64)key.tgid << 32 | (u32)key.fd, false);
#endif
    open_fds.delete(&key);
    u32 *count = open_per_process.lookup(&key.tgid);
    if (count && *count > 0)
        __sync_fetch_and_add(count, -1);
    oci_lifetime(args, OCI_EV_CLOSE, key.tgid, key.fd);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if ((u32)id != tgid)
        return 0; /* a thread, not the process */
    if (!open_per_process.lookup(&tgid))
        return 0;
    open_per_process.delete(&tgid);
#ifdef OCI_ACTIVITY
    oci_unbound_clear(tgid, 0, true);
#endif
    /* Its kept fds stay in open_fds (an LRU map), and their sockets in sk_conns (also an LRU,
     * whose hits check that their process is still in open_per_process): user space forgets
     * the process's connections, and a later process with the same tgid overwrites what it
     * reuses. */
    oci_lifetime(args, OCI_EV_EXIT, tgid, -1);
    return 0;
}
#endif

#ifdef OCI_ACTIVITY
TRACEPOINT_PROBE(sock, sock_send_length)
{
    /* Every socket send on the host comes here: the cheap tests first. */
    if (args->family != OCI_AF_UNIX || args->ret <= 0)
        return 0;
    u64 sk = (u64)args->sk;
    u32 slot = oci_sk_slot(sk);
    u32 *bound_here = sk_filter.lookup(&slot);
    if (bound_here && *bound_here) {
        struct oci_sk_conn *conn = sk_conns.lookup(&sk);
        if (conn) {
            u32 zero = 0;
            struct oci_config *cfg = config.lookup(&zero);
            if (!cfg)
                return 0;
            u64 now = bpf_ktime_get_ns();
            if (now - conn->last_ns < cfg->activity_interval_ns)
                return 0;
            u32 tgid = conn->tgid;
            if (open_per_process.lookup(&tgid)) {
                conn->last_ns = now;
                oci_report(args, OCI_EV_SEND, tgid, conn->fd, now, bpf_get_current_cgroup_id(),
                           OCI_AF_UNIX);
                return 0;
            }
            oci_sk_unbind(sk); /* its process exited: a new socket at the same address */
        }
    }
    /* Learning: the sender's latest followed connection not yet bound is this socket. */
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u32 unbound_slot = tgid & (OCI_SLOTS - 1);
    u64 *latest = unbound.lookup(&unbound_slot);
    if (!latest || *latest >> 32 != tgid)
        return 0;
    struct oci_fd_key key = {.tgid = tgid, .fd = (s32)*latest};
    *latest = 0;
    u64 *kept = open_fds.lookup(&key);
    if (!kept || *kept)
        return 0; /* closed (or evicted) meanwhile, or bound already */
    *kept = sk;
    u64 now = bpf_ktime_get_ns();
    struct oci_sk_conn bound = {.tgid = tgid, .fd = key.fd, .last_ns = now};
    if (sk_conns.update(&sk, &bound) != 0)
        return 0;
    u32 *count = sk_filter.lookup(&slot);
    if (count)
        __sync_fetch_and_add(count, 1);
    oci_report(args, OCI_EV_SEND, tgid, key.fd, now, bpf_get_current_cgroup_id(), OCI_AF_UNIX);
    return 0;
}
#endif
