package main

import (
	"fmt"
	"os"
)

// completeCmd prints the script that makes bash or zsh ask drfs itself for
// the completions of its command line (the commands, flags and values it
// declares).
type completeCmd struct {
	Shell string `arg:"" enum:"bash,zsh" help:"bash or zsh."`
}

func (c *completeCmd) Run() error {
	exe, err := os.Executable()
	if err != nil {
		exe = "drfs"
	}
	switch c.Shell {
	case "bash":
		fmt.Printf("complete -C %q drfs\n", exe)
	case "zsh":
		fmt.Printf("autoload -U +X bashcompinit && bashcompinit\ncomplete -C %q drfs\n", exe)
	}
	return nil
}
