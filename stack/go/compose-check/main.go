// compose-check loads a compose project exactly as `docker compose config` does, with compose-go
// (Apache-2.0), the library Docker Compose is built on: the Compose Specification's schema,
// interpolation from the project's .env (a required variable without a value is an error),
// normalisation. It prints the resolved project as YAML, or the error and exit status 1.
//
//	compose-check DIR    # DIR holds docker-compose.yml and .env
//
// traintel's tests check `traintel stack init`'s output with it: no Docker engine runs on the
// project's machines, and this is the part of Docker Compose that reads the files.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: compose-check DIR")
		os.Exit(2)
	}
	// as `docker compose` run in the project's directory: its compose file, its .env
	if err := os.Chdir(os.Args[1]); err != nil {
		fail(err)
	}
	options, err := cli.NewProjectOptions(nil,
		cli.WithWorkingDirectory("."),
		cli.WithDefaultConfigPath,
		cli.WithEnvFiles(),
		// only the project's .env: the check must not pass because the caller's shell has a value
		cli.WithDotEnv,
	)
	if err != nil {
		fail(err)
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		fail(err)
	}
	out, err := project.MarshalYAML()
	if err != nil {
		fail(err)
	}
	if _, err := os.Stdout.Write(out); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "compose-check:", err)
	os.Exit(1)
}
