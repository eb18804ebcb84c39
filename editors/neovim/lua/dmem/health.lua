-- :checkhealth dmem — what a user checks first when nothing appears.
local compat = require('dmem.compat')

local M = {}

function M.check()
  local health = compat.health()
  local dmem = require('dmem')
  health.start('dmem')

  local version = vim.version()
  local text = string.format('%d.%d.%d', version.major, version.minor, version.patch)
  if vim.fn.has('nvim-0.7') == 1 then
    health.ok('Neovim ' .. text)
  else
    health.error('Neovim ' .. text .. ' is too old: dmem needs 0.7 or later')
  end
  if vim.lsp.inline_completion then
    health.info('ghost text: vim.lsp.inline_completion')
  else
    health.info("ghost text: dmem's own virtual text")
  end

  -- :checkhealth opens its own buffer: look at every dmem client, not the current buffer's
  local client = compat.clients()[1]
  local cmd = client and client.config.cmd or dmem.options.cmd
  if type(cmd) ~= 'table' then
    health.info('the server is started by a function: ' .. tostring(cmd))
  elseif vim.fn.executable(cmd[1]) ~= 1 then
    health.error('`' .. cmd[1] .. '` is not an executable', {
      'Install dmem-lsp (scripts/setup in its repository) and put .venv/bin on your PATH,',
      'or give its full path: vim.lsp.config("dmem", { cmd = { "/path/to/dmem-lsp" } })',
    })
  else
    local output = vim.fn.system(vim.list_extend(vim.deepcopy(cmd), { '--version' }))
    if vim.v.shell_error == 0 then
      health.ok('server: ' .. vim.trim(output) .. ' (' .. table.concat(cmd, ' ') .. ')')
    else
      health.error('`' .. table.concat(cmd, ' ') .. ' --version` failed: ' .. vim.trim(output))
    end
  end

  if client == nil then
    health.warn('no dmem client is running', {
      "Neovim 0.11+: vim.lsp.enable('dmem'); any version: require('dmem').setup()",
    })
    return
  end
  local status = dmem.status
  if status.state == 'ready' then
    health.ok(string.format('model ready: %s', status.message or ''))
  elseif status.state == 'error' then
    health.error('the model did not load: ' .. (status.message or ''), { 'Run `dmem-lsp doctor` in a terminal' })
  else
    health.info('server state: ' .. (status.state or '?') .. ' ' .. (status.message or ''))
  end
  if status.state == 'ready' then
    local command = { command = 'dmem.memoryStatus', arguments = {} }
    local answer, failure = compat.request_sync(client, 'workspace/executeCommand', command, 5000)
    if answer then
      for _, folder in ipairs(answer.folders or {}) do
        health.ok(string.format('memory of %s in %s%s', vim.uri_to_fname(folder.folder), folder.directory,
          folder.readOnly and ' (read-only: another dmem-lsp holds it)' or ''))
      end
    else
      health.warn('memory status: ' .. tostring(failure))
    end
  end
end

return M
