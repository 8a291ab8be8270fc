/*
 * send_storm: many 1-byte write() calls in a tight loop, for the activity bench.
 *
 *   send_storm file  COUNT        write() to /dev/null (a file: no socket send)
 *   send_storm unix  COUNT        write() on a unix stream socketpair
 *   send_storm udp   COUNT        write() on a connected UDP socket to 127.0.0.1
 *   send_storm match COUNT PATH   write() on a unix stream connection to PATH (this program
 *                                 listens there itself, then connects: a traced path makes it
 *                                 a followed connection)
 *
 * The sockets' other ends are drained every BATCH writes (a read() per datagram, one per
 * stream batch), inside the timed loop: the same work in every run, whatever is attached.
 * Prints "calls=N ns=T ns_per_call=X" (CLOCK_MONOTONIC around the loop; X per write()).
 * Built with `gcc -O2 -static` by bench/activity.py.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define BATCH 16

static int usage(void)
{
    fprintf(stderr, "usage: send_storm file|unix|udp COUNT | send_storm match COUNT PATH\n");
    return 2;
}

static int fail(const char *what)
{
    perror(what);
    return 1;
}

/* A unix stream connection to itself at path: *out the connected end, *in the accepted one. */
static int unix_connection(const char *path, int *out, int *in)
{
    struct sockaddr_un addr;
    size_t n = strlen(path);
    if (n >= sizeof(addr.sun_path))
        return -1;
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, path, n);
    unlink(path);
    int server = socket(AF_UNIX, SOCK_STREAM, 0);
    if (server < 0 || bind(server, (struct sockaddr *)&addr, sizeof(addr)) ||
        listen(server, 1))
        return -1;
    *out = socket(AF_UNIX, SOCK_STREAM, 0);
    if (*out < 0 || connect(*out, (struct sockaddr *)&addr, sizeof(addr)))
        return -1;
    *in = accept(server, NULL, NULL);
    close(server);
    unlink(path);
    return *in < 0 ? -1 : 0;
}

/* Two UDP sockets on 127.0.0.1 connected to each other. */
static int udp_pair(int *out, int *in)
{
    struct sockaddr_in addr;
    socklen_t len = sizeof(addr);
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    *in = socket(AF_INET, SOCK_DGRAM, 0);
    if (*in < 0 || bind(*in, (struct sockaddr *)&addr, sizeof(addr)) ||
        getsockname(*in, (struct sockaddr *)&addr, &len))
        return -1;
    *out = socket(AF_INET, SOCK_DGRAM, 0);
    return *out < 0 || connect(*out, (struct sockaddr *)&addr, sizeof(addr)) ? -1 : 0;
}

int main(int argc, char **argv)
{
    int out = -1, in = -1, datagrams = 0;
    char buf[BATCH * 4];

    if (argc < 3)
        return usage();
    long count = atol(argv[2]);
    if (count <= 0)
        return usage();
    if (strcmp(argv[1], "file") == 0 && argc == 3) {
        out = open("/dev/null", O_WRONLY);
        if (out < 0)
            return fail("send_storm: /dev/null");
    } else if (strcmp(argv[1], "unix") == 0 && argc == 3) {
        int pair[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair))
            return fail("send_storm: socketpair");
        out = pair[0];
        in = pair[1];
    } else if (strcmp(argv[1], "udp") == 0 && argc == 3) {
        if (udp_pair(&out, &in))
            return fail("send_storm: udp");
        datagrams = 1;
    } else if (strcmp(argv[1], "match") == 0 && argc == 4) {
        if (unix_connection(argv[3], &out, &in))
            return fail("send_storm: unix connection");
    } else {
        return usage();
    }

    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 1; i <= count; i++) {
        if (write(out, "x", 1) != 1)
            return fail("send_storm: write");
        if (in >= 0 && i % BATCH == 0) {
            for (int k = 0; k < (datagrams ? BATCH : 1); k++)
                if (read(in, buf, sizeof(buf)) <= 0)
                    return fail("send_storm: read");
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    long long ns = (end.tv_sec - start.tv_sec) * 1000000000LL + (end.tv_nsec - start.tv_nsec);
    printf("calls=%ld ns=%lld ns_per_call=%.1f\n", count, ns, (double)ns / (double)count);
    return 0;
}
