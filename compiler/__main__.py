from snnc.cli import main

main(prog_name="snnc")
