// A second, independent WinRM client for checking tests/peers/wsman_server.py: Go's
// github.com/masterzen/winrm (what Packer and Terraform use) with NTLM from github.com/Azure/go-ntlmssp,
// neither built on pyspnego nor on Python. Runs one command in a cmd shell and prints JSON:
// {"exit": N, "stdout_bytes": N, "stdout_sha256": "...", "stderr": "...", "error": "..."}.
// Built by scripts/setup.d/21-winrm-go.sh.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io/ioutil"
	"os"
	"time"

	"github.com/masterzen/winrm"
)

func main() {
	host := flag.String("host", "127.0.0.1", "host address")
	port := flag.Int("port", 5985, "port")
	https := flag.Bool("https", false, "HTTPS")
	cacert := flag.String("cacert", "", "PEM file of the CA to trust (HTTPS)")
	user := flag.String("user", "", "user name (bare, DOMAIN\\user or user@domain)")
	password := flag.String("password", "", "password")
	ntlm := flag.Bool("ntlm", false, "NTLM instead of Basic")
	envelope := flag.Int("envelope", 153600, "MaxEnvelopeSize in bytes")
	command := flag.String("command", "echo hello", "command line")
	flag.Parse()

	var ca []byte
	if *cacert != "" {
		data, err := ioutil.ReadFile(*cacert)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		ca = data
	}
	endpoint := winrm.NewEndpoint(*host, *port, *https, false, ca, nil, nil, 60*time.Second)
	params := winrm.NewParameters("PT20S", "en-US", *envelope)
	if *ntlm {
		params.TransportDecorator = func() winrm.Transporter { return &winrm.ClientNTLM{} }
	}
	out := map[string]interface{}{}
	client, err := winrm.NewClientWithParameters(endpoint, *user, *password, params)
	if err == nil {
		var stdout, stderr bytes.Buffer
		var code int
		code, err = client.Run(*command, &stdout, &stderr)
		sum := sha256.Sum256(stdout.Bytes())
		out["exit"] = code
		out["stdout_bytes"] = stdout.Len()
		out["stdout_sha256"] = hex.EncodeToString(sum[:])
		out["stderr"] = stderr.String()
	}
	if err != nil {
		out["error"] = err.Error()
	}
	data, _ := json.Marshal(out)
	fmt.Println(string(data))
}
