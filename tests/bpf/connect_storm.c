/*
 * connect_storm: many connect() calls in a tight loop, for the tracer's storm test and bench.
 *
 *   connect_storm unix  NOISE_PATH MATCH_PATH COUNT EVERY
 *   connect_storm inet  NOISE_PORT MATCH_PORT COUNT EVERY     (127.0.0.1, UDP)
 *   connect_storm inet6 NOISE_PORT MATCH_PORT COUNT EVERY     (::1, UDP)
 *
 * Makes COUNT connect() calls on one socket: call i (1-based) goes to MATCH when EVERY > 0 and
 * i % EVERY == 0, else to NOISE. A unix stream socket's connect to a missing path fails with
 * ENOENT and leaves the socket reusable; a UDP connect only sets the default destination. So
 * the loop is connect() calls and nothing else. Failed connects are expected and ignored.
 *
 * Prints "calls=N matching=M ns=T ns_per_call=X" (CLOCK_MONOTONIC around the loop).
 * Built with `gcc -O2 -static` by the tests and bench/tracer.py.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static int usage(void)
{
    fprintf(stderr, "usage: connect_storm unix|inet|inet6 NOISE MATCH COUNT EVERY\n");
    return 2;
}

static int unix_address(struct sockaddr_un *addr, socklen_t *len, const char *path)
{
    size_t n = strlen(path);
    if (n >= sizeof(addr->sun_path))
        return -1;
    memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    memcpy(addr->sun_path, path, n);
    if (path[0] == '@') /* abstract: "@name" is "\0name" of exactly that length */
        addr->sun_path[0] = '\0';
    else
        n += 1;
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    return 0;
}

static int inet_address(struct sockaddr_storage *addr, socklen_t *len, int family,
                        const char *port)
{
    memset(addr, 0, sizeof(*addr));
    if (family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)addr;
        in->sin_family = AF_INET;
        in->sin_port = htons((unsigned short)atoi(port));
        in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        *len = sizeof(*in);
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)addr;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((unsigned short)atoi(port));
        in6->sin6_addr = in6addr_loopback;
        *len = sizeof(*in6);
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct sockaddr_storage noise, match;
    socklen_t noise_len, match_len;
    int family, fd;

    if (argc != 6)
        return usage();
    if (strcmp(argv[1], "unix") == 0)
        family = AF_UNIX;
    else if (strcmp(argv[1], "inet") == 0)
        family = AF_INET;
    else if (strcmp(argv[1], "inet6") == 0)
        family = AF_INET6;
    else
        return usage();
    long count = atol(argv[4]);
    long every = atol(argv[5]);
    if (count < 0 || every < 0)
        return usage();

    if (family == AF_UNIX) {
        if (unix_address((struct sockaddr_un *)&noise, &noise_len, argv[2]) ||
            unix_address((struct sockaddr_un *)&match, &match_len, argv[3]))
            return usage();
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
    } else {
        inet_address(&noise, &noise_len, family, argv[2]);
        inet_address(&match, &match_len, family, argv[3]);
        fd = socket(family, SOCK_DGRAM, 0);
    }
    if (fd < 0) {
        perror("connect_storm: socket");
        return 1;
    }

    struct timespec start, end;
    long matching = 0;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 1; i <= count; i++) {
        if (every > 0 && i % every == 0) {
            connect(fd, (struct sockaddr *)&match, match_len);
            matching++;
        } else {
            connect(fd, (struct sockaddr *)&noise, noise_len);
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    long long ns = (end.tv_sec - start.tv_sec) * 1000000000LL + (end.tv_nsec - start.tv_nsec);
    printf("calls=%ld matching=%ld ns=%lld ns_per_call=%.1f\n", count, matching, ns,
           count ? (double)ns / (double)count : 0.0);
    close(fd);
    return 0;
}
