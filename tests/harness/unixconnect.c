/*
 * unixconnect: make one real connect() to a unix stream socket, for end-to-end tests.
 *
 *   unixconnect PATH [DATA [SECONDS]]
 *
 * Connects to PATH, writes DATA if given (and not empty), sleeps SECONDS if given, then exits.
 * Exit status: 0 connected, 1 socket/connect/write failed (reason on stderr), 2 usage error.
 * Prints "connected pid=<pid>" on stdout after a successful connect (the PID as the container's
 * PID namespace sees it; the host side learns the host PID from SO_PEERCRED).
 *
 * Built with `gcc -static -O2` by tests/harness/image.py and put into the test image, because
 * busybox nc cannot connect to unix sockets.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int usage(void)
{
    fprintf(stderr, "usage: unixconnect PATH [DATA [SECONDS]]\n");
    return 2;
}

int main(int argc, char **argv)
{
    struct sockaddr_un addr;
    const char *path;
    const char *data = NULL;
    unsigned int seconds = 0;
    int fd;

    if (argc < 2 || argc > 4)
        return usage();
    path = argv[1];
    if (argc >= 3 && argv[2][0] != '\0')
        data = argv[2];
    if (argc == 4) {
        char *end;
        unsigned long value = strtoul(argv[3], &end, 10);
        if (*argv[3] == '\0' || *end != '\0' || value > 86400UL * 365)
            return usage();
        seconds = (unsigned int)value;
    }
    if (strlen(path) >= sizeof(addr.sun_path)) {
        fprintf(stderr, "unixconnect: path too long: %s\n", path);
        return 2;
    }

    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "unixconnect: socket: %s\n", strerror(errno));
        return 1;
    }
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, path);
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        fprintf(stderr, "unixconnect: connect %s: %s\n", path, strerror(errno));
        return 1;
    }
    printf("connected pid=%ld\n", (long)getpid());
    fflush(stdout);

    if (data != NULL) {
        size_t left = strlen(data);
        while (left > 0) {
            ssize_t n = write(fd, data, left);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                fprintf(stderr, "unixconnect: write: %s\n", strerror(errno));
                return 1;
            }
            data += n;
            left -= (size_t)n;
        }
    }
    if (seconds > 0)
        sleep(seconds);
    close(fd);
    return 0;
}
