// Command ociresolve-go asks the ociresolve node daemon (`ociresolve serve`) which Kubernetes
// pod and container a process, cgroup or container id belongs to (Lookup), or prints the
// containers it knows and every change to them (Watch). It prints the daemon's messages, one
// JSON object per line, in proto3's JSON mapping.
//
// Its client code is generated from ociresolve/api/api.proto by ./build; see README.md.
//
//	ociresolve-go [-socket PATH] lookup (-pid N | -cgroup-id N | -container-id ID) [-explain] [-timeout D]
//	ociresolve-go [-socket PATH] watch [-n N] [-for D]
//
// Exit status: 0 when the lookup found a container, or the watch ended as asked; 1 for a host
// process or a key no container is known by; 2 for anything else (no such process, the daemon
// did not answer or refused, a bad command line).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"time"
	"unicode/utf16"

	ociresolvev1 "github.com/ociresolve/ociresolve/api/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/local"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

const (
	prog = "ociresolve-go"

	exitOK       = 0
	exitNotFound = 1
	exitError    = 2

	// What every client of the daemon uses: $OCIRESOLVE_SOCKET, else this.
	socketEnv     = "OCIRESOLVE_SOCKET"
	defaultSocket = "/run/ociresolve/ociresolve.sock"
)

const usage = `usage: ociresolve-go [-socket PATH] lookup (-pid N | -cgroup-id N | -container-id ID) [-explain] [-timeout D]
       ociresolve-go [-socket PATH] watch [-n N] [-for D]

  -socket PATH  the daemon's socket (default $OCIRESOLVE_SOCKET, else /run/ociresolve/ociresolve.sock)

Run 'ociresolve-go lookup -h' or 'ociresolve-go watch -h' for their options.
`

// errUsage is a bad command line; the flag package has already said what was wrong.
var errUsage = errors.New("bad usage")

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is the whole program: it returns the exit status, having printed the answer to stdout
// and anything worth saying to stderr.
func run(args []string, stdout, stderr io.Writer) int {
	global := flag.NewFlagSet(prog, flag.ContinueOnError)
	global.SetOutput(stderr)
	global.Usage = func() { fmt.Fprint(stderr, usage) }
	socket := global.String("socket", socketFromEnv(), "the daemon's unix socket")
	if err := global.Parse(args); err != nil {
		return usageStatus(err)
	}
	if global.NArg() == 0 {
		fmt.Fprint(stderr, usage)
		return exitError
	}

	var code int
	var err error
	switch command, rest := global.Arg(0), global.Args()[1:]; command {
	case "lookup":
		code, err = lookup(*socket, rest, stdout, stderr)
	case "watch":
		code, err = watch(*socket, rest, stdout, stderr)
	default:
		fmt.Fprintf(stderr, "%s: unknown command %q\n%s", prog, command, usage)
		return exitError
	}
	if errors.Is(err, errUsage) || errors.Is(err, flag.ErrHelp) {
		return usageStatus(err)
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", prog, err)
	}
	return code
}

func socketFromEnv() string {
	if socket := os.Getenv(socketEnv); socket != "" {
		return socket
	}
	return defaultSocket
}

// newFlagSet returns the flags of a command, whose usage line is "ociresolve-go NAME SYNOPSIS".
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	flags := flag.NewFlagSet(name, flag.ContinueOnError)
	flags.SetOutput(stderr)
	flags.Usage = func() {
		fmt.Fprintf(stderr, "usage: %s [-socket PATH] %s %s\n", prog, name, synopsis)
		flags.PrintDefaults()
	}
	return flags
}

// parseFlags parses a command's flags: errUsage when the flag package refused them (it said
// why), flag.ErrHelp for -h.
func parseFlags(flags *flag.FlagSet, args []string) error {
	err := flags.Parse(args)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		return errUsage
	}
	return err
}

// usageStatus is the exit status after a command line the flag package refused: 0 for -h.
func usageStatus(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	return exitError
}

// dial returns a connection to the daemon's socket. It connects lazily: a daemon that is not
// there shows as the first call's Unavailable.
func dial(socket string) (*grpc.ClientConn, error) {
	path, err := filepath.Abs(socket)
	if err != nil {
		return nil, err
	}
	// "unix://" and an absolute path: grpc-go 1.34 and newer resolve the scheme themselves;
	// 1.33 (Debian 12's) hands the whole target to its default dialer, which dials the same
	// socket. Local credentials: no TLS, and a connection to anything but a local socket (or
	// loopback) is refused.
	return grpc.Dial("unix://"+path, grpc.WithTransportCredentials(local.NewCredentials()))
}

// -- lookup ------------------------------------------------------------------------------------

func lookup(socket string, args []string, stdout, stderr io.Writer) (int, error) {
	flags := newFlagSet("lookup", "(-pid N | -cgroup-id N | -container-id ID) [-explain] [-timeout D]", stderr)
	pid := flags.Uint64("pid", 0, "a process id, in the daemon's PID namespace (the host's)")
	cgroupID := flags.Uint64("cgroup-id", 0, "a cgroup v2 id, as bpf_get_current_cgroup_id() returns")
	containerID := flags.String("container-id", "", "a runtime's full container id (64 hex digits)")
	explain := flags.Bool("explain", false, "also print each step the daemon tried, with its time")
	timeout := flags.Duration("timeout", time.Second, "the call's deadline")
	if err := parseFlags(flags, args); err != nil {
		return exitError, err
	}

	request := &ociresolvev1.LookupRequest{Explain: *explain}
	var key string
	keys := 0
	flags.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "pid":
			request.Key = &ociresolvev1.LookupRequest_Pid{Pid: uint32(*pid)}
			key = fmt.Sprintf("pid %d", *pid)
		case "cgroup-id":
			request.Key = &ociresolvev1.LookupRequest_CgroupId{CgroupId: *cgroupID}
			key = fmt.Sprintf("cgroup id %d", *cgroupID)
		case "container-id":
			request.Key = &ociresolvev1.LookupRequest_ContainerId{ContainerId: *containerID}
			key = "container " + *containerID
		default:
			return
		}
		keys++
	})
	switch {
	case keys != 1 || flags.NArg() != 0:
		fmt.Fprintf(stderr, "%s lookup: give one of -pid, -cgroup-id or -container-id\n", prog)
		return exitError, errUsage
	case *pid > math.MaxUint32:
		fmt.Fprintf(stderr, "%s lookup: -pid %d: out of range\n", prog, *pid)
		return exitError, errUsage
	case *timeout <= 0:
		fmt.Fprintf(stderr, "%s lookup: -timeout must be positive\n", prog)
		return exitError, errUsage
	}

	conn, err := dial(socket)
	if err != nil {
		return exitError, fmt.Errorf("%s: %w", socket, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	response, err := ociresolvev1.NewResolverClient(conn).Lookup(ctx, request)
	if err != nil {
		return exitError, fmt.Errorf("%s: lookup %s: %s", socket, key, describe(err))
	}
	if err := printJSON(stdout, response); err != nil {
		return exitError, err
	}

	switch response.GetStatus() {
	case ociresolvev1.LookupResponse_FOUND:
		return exitOK, nil
	case ociresolvev1.LookupResponse_HOST:
		fmt.Fprintf(stderr, "%s: %s: a host process, in no container\n", prog, key)
		return exitNotFound, nil
	case ociresolvev1.LookupResponse_NOT_FOUND:
		// For a PID, the container its cgroup names (not a Kubernetes one), if any.
		if id := response.GetContainerId(); id != "" && id != *containerID {
			fmt.Fprintf(stderr, "%s: %s: in container %s, not known as a Kubernetes container\n", prog, key, id)
		} else {
			fmt.Fprintf(stderr, "%s: %s: no Kubernetes container known\n", prog, key)
		}
		return exitNotFound, nil
	case ociresolvev1.LookupResponse_NO_SUCH_PROCESS:
		return exitError, fmt.Errorf("%s: no such process", key)
	case ociresolvev1.LookupResponse_ERROR:
		return exitError, fmt.Errorf("%s: the daemon failed: %s", key, response.GetError())
	default:
		return exitError, fmt.Errorf("%s: unknown status %v", key, response.GetStatus())
	}
}

// -- watch -------------------------------------------------------------------------------------

func watch(socket string, args []string, stdout, stderr io.Writer) (int, error) {
	flags := newFlagSet("watch", "[-n N] [-for D]", stderr)
	count := flags.Int("n", 0, "stop after this many events (0: when -for is over)")
	duration := flags.Duration("for", 10*time.Second, "stop after this long (the stream's deadline)")
	if err := parseFlags(flags, args); err != nil {
		return exitError, err
	}
	if flags.NArg() != 0 || *count < 0 || *duration <= 0 {
		fmt.Fprintf(stderr, "%s watch: takes -n N (>= 0) and -for D (> 0) only\n", prog)
		return exitError, errUsage
	}

	conn, err := dial(socket)
	if err != nil {
		return exitError, fmt.Errorf("%s: %w", socket, err)
	}
	defer conn.Close()
	// The deadline is the end of the watch: the stream then ends with DeadlineExceeded.
	ctx, cancel := context.WithTimeout(context.Background(), *duration)
	defer cancel()
	stream, err := ociresolvev1.NewResolverClient(conn).Watch(ctx, &ociresolvev1.WatchRequest{})
	if err != nil {
		return exitError, fmt.Errorf("%s: watch: %s", socket, describe(err))
	}
	for seen := 0; *count == 0 || seen < *count; seen++ {
		event, err := stream.Recv()
		switch {
		case status.Code(err) == codes.DeadlineExceeded && ctx.Err() != nil:
			return exitOK, nil // -for is over
		case errors.Is(err, io.EOF):
			return exitError, fmt.Errorf("%s: watch: the daemon ended the stream", socket)
		case err != nil:
			// ABORTED or RESOURCE_EXHAUSTED: the daemon dropped this watcher; watch again
			// for the current set anew.
			return exitError, fmt.Errorf("%s: watch: %s", socket, describe(err))
		}
		if err := printJSON(stdout, event); err != nil {
			return exitError, err
		}
	}
	return exitOK, nil
}

// -- output ------------------------------------------------------------------------------------

// describe is a failed call's status code and message, e.g. "Unavailable: connection error:
// ... connect: no such file or directory".
func describe(err error) string {
	s := status.Convert(err)
	return fmt.Sprintf("%s: %s", s.Code(), s.Message())
}

// printJSON writes one message as one line of proto3 JSON (field names as in api.proto; 64-bit
// integers such as cgroup_id are strings there), printable ASCII only: every value from a
// container (names, annotations) is untrusted, and none can break or forge a line.
func printJSON(w io.Writer, m proto.Message) error {
	raw, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return err
	}
	var line bytes.Buffer
	// protojson varies its whitespace on purpose (its output is not stable); compact it.
	if err := json.Compact(&line, raw); err != nil {
		return err
	}
	line.WriteByte('\n')
	_, err = w.Write(asciiJSON(line.Bytes()))
	return err
}

// asciiJSON escapes every character of a JSON text that is not printable ASCII (DEL and
// everything beyond it; the encoder has escaped the control characters already) as \uXXXX.
// Outside strings a JSON text is ASCII, so only strings change, and they read back the same.
func asciiJSON(text []byte) []byte {
	out := make([]byte, 0, len(text))
	for _, r := range string(text) {
		switch {
		case r < 0x7f:
			out = append(out, byte(r))
		case r > 0xffff:
			high, low := utf16.EncodeRune(r)
			out = fmt.Appendf(out, `\u%04x\u%04x`, high, low)
		default:
			out = fmt.Appendf(out, `\u%04x`, r)
		}
	}
	return out
}
