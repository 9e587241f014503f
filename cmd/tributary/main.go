// Command tributary is the service-discovery federation server and its CLI.
//
//	tributary serve --config FILE      run the server
//	tributary watch AUTHORITY          print a Get stream as a proxy sees it
//	tributary status                   print the sources and the largest services
//	tributary explain AUTHORITY        print what is served for AUTHORITY, and why
//	tributary check FILE...            validate a config or services file
//	tributary register …               register an endpoint and keep it alive
//	tributary registrations            list the registrations
//	tributary version                  print the version
package main

import (
	"fmt"
	"io"
	"os"
)

// version, commit and date are set at build time with -ldflags
// "-X main.version=… -X main.commit=… -X main.date=…" (make build, make release).
var (
	version = "dev"
	commit  = ""
	date    = ""
)

const usage = `usage: tributary <command> [flags]

commands:
  serve --config FILE [--listen ADDR] [--admin ADDR]
        run the server (destination gRPC API and admin HTTP)
  watch AUTHORITY [--addr ADDR] [--admin ADDR] [--json] [--profile] [--token TOKEN]
        [--ca FILE] [--cert FILE --key FILE] [--server-name NAME]
        print the stream a proxy receives for AUTHORITY (host:port) as a table
  status [--admin ADDR] [--top N]
        print the sources and the largest services (exit 3: a source is not up)
  explain AUTHORITY [--zone Z] [--json] [--admin ADDR]
        print every endpoint of AUTHORITY, whether a client in zone Z receives
        it, and why (exit 3: nothing served)
  check FILE...
        validate config files (and the services files they name) or services
        files; errors as file:line
  register --authority HOST:PORT --address IP:PORT [--ttl 10s] [--check URL] [--addr ADDR]
        register an endpoint, keep it alive while the check passes, deregister on SIGTERM
  registrations [--addr ADDR] [--authority HOST:PORT]
        list the live registrations
  version
        print the version, and the commit and build date when stamped in

Run 'tributary <command> -h' for a command's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is the command line without the process: args without the program
// name, and the exit code to leave with (0 ok, 1 failed, 2 usage; status:
// 3 degraded). docs/operations.md lists them.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) < 1 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	rest := args[1:]
	switch args[0] {
	case "serve":
		return serveCmd(rest, stderr)
	case "watch":
		return watchCmd(rest, stdout, stderr)
	case "status":
		return statusCmd(rest, stdout, stderr)
	case "explain":
		return explainCmd(rest, stdout, stderr)
	case "check":
		return checkCmd(rest, stdout, stderr)
	case "register":
		return registerCmd(rest, stdout, stderr)
	case "registrations":
		return registrationsCmd(rest, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, versionLine())
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "tributary: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	return 0
}

// versionLine is what `tributary version` prints: the version, then the
// commit and build date when the build stamped them.
func versionLine() string {
	line := "tributary " + version
	if commit != "" {
		line += " commit " + commit
	}
	if date != "" {
		line += " built " + date
	}
	return line
}
